package bmp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/bgpedge/bgpedge/internal/lograte"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
)

// Spool is where sessions put what routers send. Append returns once the
// records are durable and may block (honouring ctx) while the spool is full;
// it must not keep references to the records' byte slices after it returns.
// *buffer.Spool implements it.
type Spool interface {
	Append(ctx context.Context, recs ...record.Record) (first uint64, err error)
}

// ErrListenerClosed is returned by Start on a listener that was closed.
var ErrListenerClosed = errors.New("bmp: listener closed")

// Listener accepts BMP sessions from routers and spools every message they
// send, in order, one reader goroutine per session.
//
// Lifecycle: NewListener, Start (binds and begins accepting), Addr, Close.
// Serve combines them for callers that want one blocking call.
type Listener struct {
	// closeGrace bounds the wait for sessions after Close's deadline, once
	// their appends are cancelled.
	closeGrace time.Duration

	cfg   Config
	spool Spool
	log   *slog.Logger
	m     *metrics
	allow []netip.Prefix

	mu       sync.Mutex
	ln       net.Listener
	sessions map[*session]struct{}
	routers  map[netip.Addr]*router // by router address, while it has sessions
	closed   bool

	closing atomic.Bool
	done    chan struct{} // closed by Close: wakes sessions waiting for budget
	wg      sync.WaitGroup

	budget  *bufferBudget
	batches sync.Pool // of *[]record.Record, empty, shared by sessions between flushes
	// batched counts the records in all sessions' batches; past
	// maxBatched a session spools what it has instead of collecting more.
	batched    atomic.Int64
	maxBatched int64

	// appendCtx bounds spool appends: it is cancelled only when a Close
	// deadline passes, so sessions can flush what they already read.
	appendCtx    context.Context
	cancelAppend context.CancelFunc
	// runCtx is cancelled when Close begins: appends waiting for space in a
	// full spool then go again into its reserve (stopAppend), so that a stop
	// neither waits for space nothing may free nor drops what was read.
	runCtx     context.Context
	cancelRun  context.CancelFunc
	stopAppend func(ctx context.Context, recs ...record.Record) (uint64, error)

	journal *SessionJournal // nil: no journal

	refusedLog lograte.Limiter
	acceptLog  lograte.Limiter
	budgetLog  lograte.Limiter
	journalLog lograte.Limiter
}

// ListenerOption configures a Listener beyond its Config.
type ListenerOption func(*Listener)

// WithSessionJournal makes the listener record in j which peers each session
// has up, so that the next start after a crash can mark them down (see
// SessionJournal.Recover).
func WithSessionJournal(j *SessionJournal) ListenerOption {
	return func(l *Listener) { l.journal = j }
}

// NewListener validates cfg and registers the listener's metrics. A nil
// logger discards logs; a nil registerer skips registration.
func NewListener(cfg Config, spool Spool, logger *slog.Logger, reg prometheus.Registerer, opts ...ListenerOption) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if spool == nil {
		return nil, errors.New("bmp: listener needs a spool")
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	budget := newBufferBudget(cfg.BufferBudgetBytes)
	m, err := newMetrics(reg, budget)
	if err != nil {
		return nil, fmt.Errorf("bmp: register metrics: %w", err)
	}
	l := &Listener{
		cfg:        cfg,
		spool:      spool,
		log:        logger,
		m:          m,
		sessions:   make(map[*session]struct{}),
		routers:    make(map[netip.Addr]*router),
		done:       make(chan struct{}),
		budget:     budget,
		maxBatched: batchedLimit(cfg.BufferBudgetBytes),
		closeGrace: defaultCloseGrace,
	}
	for _, a := range cfg.Allow {
		p, _ := parseAllow(a) // Validate checked it
		l.allow = append(l.allow, p)
	}
	for _, o := range opts {
		o(l)
	}
	l.appendCtx, l.cancelAppend = context.WithCancel(context.Background())
	l.runCtx, l.cancelRun = context.WithCancel(l.appendCtx)
	l.stopAppend = reservedAppend(spool)
	return l, nil
}

// Start binds the listen address and accepts sessions in the background
// until Close. ctx only bounds the bind.
func (l *Listener) Start(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrListenerClosed
	}
	if l.ln != nil {
		return errors.New("bmp: listener already started")
	}
	lc := net.ListenConfig{KeepAlive: -1}
	if ka := l.cfg.TCPKeepalive; ka > 0 {
		// Idle and interval alike: a vanished router is noticed after ~4×ka.
		lc.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: ka, Interval: ka, Count: 3}
	}
	ln, err := lc.Listen(ctx, "tcp", l.cfg.Listen)
	if err != nil {
		return fmt.Errorf("bmp: listen: %w", err)
	}
	l.ln = ln
	l.log.Info("bmp listener started", "addr", ln.Addr().String())
	l.wg.Add(1)
	go l.acceptLoop(ln)
	return nil
}

// Addr is the bound address (useful with port 0), or nil before Start.
func (l *Listener) Addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// ActiveSessions is the number of open router sessions.
func (l *Listener) ActiveSessions() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sessions)
}

// Serve starts the listener and runs it until ctx is done, then closes it,
// giving sessions shutdownTimeout to flush to the spool.
func (l *Listener) Serve(ctx context.Context, shutdownTimeout time.Duration) error {
	if err := l.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	return l.Close(cctx)
}

// Close stops accepting, ends every session and waits for them to flush what
// they read to the spool, followed by a synthetic peer-down record for each
// peer that was still up (the station can no longer vouch for it; the router
// sends a fresh Peer Up when it reconnects). If ctx ends first, pending
// appends are abandoned (counted in bgpedge_bmp_messages_dropped_total) and
// ctx's error is returned.
func (l *Listener) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.closing.Store(true)
	l.cancelRun()
	close(l.done)
	var err error
	if l.ln != nil {
		err = l.ln.Close()
	}
	for s := range l.sessions {
		s.conn.Close() // wakes the reader; it flushes, then exits
	}
	l.mu.Unlock()

	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		l.cancelAppend()
		select {
		case <-done:
		case <-time.After(l.closeGrace):
			// A spool or journal write that does not honour cancellation
			// (a stalled disk) must not hold the process's shutdown.
			l.mu.Lock()
			left := len(l.sessions)
			l.mu.Unlock()
			l.log.Error("bmp sessions did not end after their appends were cancelled; shutting down without them",
				"sessions", left, "grace", l.closeGrace)
		}
		return fmt.Errorf("bmp: close: %w", ctx.Err())
	}
	l.cancelAppend()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("bmp: close: %w", err)
	}
	return nil
}

// defaultCloseGrace is how long Close waits for sessions once their
// appends are cancelled at its deadline.
const defaultCloseGrace = 5 * time.Second

func (l *Listener) acceptLoop(ln net.Listener) {
	defer l.wg.Done()
	backoff := time.Duration(0)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if l.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if _, ok := l.acceptLog.Allow(); ok {
				l.log.Warn("bmp accept failed", "err", err, "retry_in", backoff)
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		l.admit(conn)
	}
}

// admit turns a connection into a session, or refuses it.
func (l *Listener) admit(conn net.Conn) {
	remote := addrPort(conn.RemoteAddr())
	if !l.allowed(remote.Addr()) {
		l.refuse(conn, remote, RefuseNotAllowed)
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		conn.Close()
		return
	}
	if len(l.sessions) >= l.cfg.MaxSessions {
		l.mu.Unlock()
		l.refuse(conn, remote, RefuseMaxSessions)
		return
	}
	s := newSession(l, conn, remote)
	l.sessions[s] = struct{}{}
	r := l.routers[remote.Addr()]
	if r == nil {
		r = &router{owner: make(map[PeerKey]*session)}
		l.routers[remote.Addr()] = r
	}
	s.router = r
	r.sessions = append(r.sessions, s)
	r.live.Add(1)
	l.wg.Add(1)
	l.mu.Unlock()

	l.m.accepted.Inc()
	l.m.active.Inc()
	go func() {
		defer l.wg.Done()
		s.run()
		l.mu.Lock()
		delete(l.sessions, s)
		r.sessions = slices.DeleteFunc(r.sessions, func(o *session) bool { return o == s })
		r.live.Add(-1)
		if len(r.sessions) == 0 {
			delete(l.routers, remote.Addr())
		}
		l.mu.Unlock()
		l.m.active.Dec()
	}()
}

// router orders the sessions of one router address. A router that
// reconnects while its previous session is still open (a connection that
// died without a FIN ends only at a keepalive or idle timeout) has two: the
// old one must not mark down, when it ends, the peers the new one has
// announced since, and what it does mark down must reach the spool before
// the new session's records that follow. So each peer belongs to the
// session that announced it last (a Peer Up, or the first Route Monitoring
// of a peer without one), a session that ends marks down only the peers it
// still owns, and a session's flush waits while an earlier session of its
// router is ending. Guarded by Listener.mu.
type router struct {
	sessions []*session           // admitted and not yet ended, oldest first
	owner    map[PeerKey]*session // the session each peer was last announced by
	live     atomic.Int32         // len(sessions), read without the lock
}

func (l *Listener) refuse(conn net.Conn, remote netip.AddrPort, reason string) {
	// Counted before the close: whoever sees the connection refused then
	// finds it counted.
	l.m.refused.WithLabelValues(reason).Inc()
	conn.Close()
	if n, ok := l.refusedLog.Allow(); ok {
		l.log.Warn("bmp connection refused", "router", remote.String(), "reason", reason, "suppressed_since_last", n)
	}
}

func (l *Listener) allowed(a netip.Addr) bool {
	if len(l.allow) == 0 {
		return true
	}
	a = a.Unmap()
	for _, p := range l.allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// getBatch starts small: a batch holds what one read buffered, and with a
// thousand routers spooling at once, batches made at the largest size
// (about 100 KiB of record headers each, zeroed, so resident) took more
// memory than the read buffers whose messages they point into. A batch
// grows by append to what its session needs, and is pooled at that size.
func (l *Listener) getBatch() []record.Record {
	if b, ok := l.batches.Get().(*[]record.Record); ok {
		return *b
	}
	return make([]record.Record, 0, min(l.cfg.BatchMessages, initialBatch))
}

const initialBatch = 64

// batchedLimit bounds the records of all sessions' batches together to a
// quarter of the read-buffer budget in record headers (about 80,000 records
// at the default 32 MiB): a batch's messages stay in the read buffers, but
// each costs a record header beside them, which for ~100-byte messages is
// as much again. Fourteen busy routers never reach it; a thousand routers
// streaming at once make smaller batches instead of holding more memory.
func batchedLimit(budgetBytes int) int64 {
	return max(int64(budgetBytes)/4/int64(unsafe.Sizeof(record.Record{})), 1024)
}

func (l *Listener) putBatch(b []record.Record) {
	b = b[:0]
	l.batches.Put(&b)
}

// bufferBudget is the listener-wide allowance for read-buffer memory above
// each session's initial buffer. Sessions reserve before they grow and
// release when they shrink or end; reservations are rare (a buffer doubles
// at most a few times per message size change), so the per-message path
// never touches it. Sessions that must wait are served in arrival order, and
// everyone else yields to them, so a session waiting to hold one large
// message is not starved by a stream of smaller reservations.
type bufferBudget struct {
	limit   int64
	used    atomic.Int64 // reserved bytes, ≤ limit
	total   atomic.Int64 // every session buffer, initial ones included (for the gauge)
	waiting atomic.Int32 // len(queue), read without mu

	mu    sync.Mutex
	freed chan struct{} // closed and replaced to wake waiters
	queue []*budgetWaiter
}

type budgetWaiter struct{ n int64 }

func newBufferBudget(limit int) *bufferBudget {
	return &bufferBudget{limit: int64(limit), freed: make(chan struct{})}
}

// tryReserve takes n bytes if they are available with keep bytes still left
// over afterwards and no session is waiting for budget.
func (b *bufferBudget) tryReserve(n, keep int64) bool {
	return b.waiting.Load() == 0 && b.take(n, keep)
}

func (b *bufferBudget) take(n, keep int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.limit-keep {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// reserve takes n bytes, waiting its turn until enough are released, stop is
// closed, or timeout passes. It reports whether it reserved.
func (b *bufferBudget) reserve(stop <-chan struct{}, timeout time.Duration, n int64) bool {
	b.mu.Lock()
	if len(b.queue) == 0 && b.take(n, 0) {
		b.mu.Unlock()
		return true
	}
	w := &budgetWaiter{n: n}
	b.queue = append(b.queue, w)
	b.waiting.Add(1)
	b.mu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		b.mu.Lock()
		if b.queue[0] == w && b.take(w.n, 0) {
			b.leaveLocked(w)
			b.mu.Unlock()
			return true
		}
		freed := b.freed
		b.mu.Unlock()
		select {
		case <-freed:
		case <-stop:
			b.leave(w)
			return false
		case <-timer.C:
			b.leave(w)
			return false
		}
	}
}

func (b *bufferBudget) leave(w *budgetWaiter) {
	b.mu.Lock()
	b.leaveLocked(w)
	b.mu.Unlock()
}

// leaveLocked takes w out of the queue and wakes the others: the next in
// line may now go ahead.
func (b *bufferBudget) leaveLocked(w *budgetWaiter) {
	b.queue = slices.DeleteFunc(b.queue, func(q *budgetWaiter) bool { return q == w })
	b.waiting.Add(-1)
	close(b.freed)
	b.freed = make(chan struct{})
}

func (b *bufferBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.used.Add(-n)
	// Under mu, so a waiter that found the budget short (also under mu)
	// either sees these bytes or holds the channel closed here.
	b.mu.Lock()
	close(b.freed)
	b.freed = make(chan struct{})
	b.mu.Unlock()
}
