package bmp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/bgpedge/bgpedge/record"
)

// session is one router connection: a single goroutine reads, frames and
// spools its messages in order. While an append waits (the spool is full or
// failing) the session does not read, which is the intended backpressure.
type session struct {
	l      *Listener
	conn   net.Conn
	remote netip.AddrPort
	key    []byte // router IP, shared by every record of the session
	source string

	batch []record.Record
	// per-type counts of the batch being built, added to metrics per flush
	nMsgs  [numTypes]uint64
	nBytes [numTypes]uint64

	// peers that are up: the 42-byte per-peer header of their last Peer Up,
	// or of the first Route Monitoring message of a peer that sent routes
	// without a Peer Up (notePeer)
	peers map[PeerKey][]byte
	// the identity bytes (type, flags, distinguisher, address) of the last
	// Route Monitoring message's peer, known to be in peers while rmKnown
	rmPeer  [peerIdentityLen]byte
	rmKnown bool
	// the router's sessions and which owns each peer (Listener.mu);
	// ending is set under the same lock once reading stopped, and ended
	// is closed after the session's last flush
	router *router
	ending bool
	ended  chan struct{}
	// what the session journal holds for this session (id), when there is
	// one, and whether peers may differ from it (a Peer Up or Down, or a
	// new peer's first Route Monitoring, was read)
	id           string
	journaled    map[PeerKey][]byte
	peersChanged bool

	messages   uint64
	bytes      uint64
	appendWarn bool // an append failure was logged for this session

	// framing buffer: buf[start:end] is received and not yet returned
	buf        []byte
	start, end int
	grow       bool // the last read filled the buffer: grow before the next
	initiated  bool // a whole message arrived
	// time spent in reads for the message pending in buf[start:end] since
	// its first byte (waits for the spool or for budget do not count)
	partialWait time.Duration
	// the read deadline armed on conn, and when it passes
	deadline   int
	deadlineAt time.Time
}

func newSession(l *Listener, conn net.Conn, remote netip.AddrPort) *session {
	return &session{
		l:      l,
		conn:   conn,
		remote: remote,
		key:    []byte(remote.Addr().String()),
		source: remote.String(),
		id:     remote.String() + "@" + strconv.FormatInt(time.Now().UnixNano(), 10),
		ended:  make(chan struct{}),
	}
}

func (s *session) run() {
	l := s.l
	started := time.Now()
	defer s.conn.Close()
	if tc, ok := s.conn.(*net.TCPConn); ok && l.cfg.SocketReceiveBufferBytes > 0 {
		_ = tc.SetReadBuffer(l.cfg.SocketReceiveBufferBytes)
	}
	l.log.Info("bmp session opened", "router", s.source)

	reason, detail := s.read()

	// Whatever was read is flushed, then the peers the router left up are
	// marked down, in the same append so they follow the session's last
	// message: those this session still owns, not those a newer session of
	// the router has announced since (router).
	now := time.Now()
	defer close(s.ended)
	synthetic := 0
	l.mu.Lock()
	s.ending = true
	for k, hdr := range s.peers {
		if s.router != nil && s.router.owner[k] != s {
			continue
		}
		if s.router != nil {
			delete(s.router.owner, k)
		}
		s.batch = append(s.batch, record.Record{
			Kind:    record.KindBMPSyntheticPeerDown,
			Key:     s.key,
			Time:    now,
			Source:  s.source,
			Payload: hdr,
		})
		synthetic++
	}
	l.mu.Unlock()
	l.batched.Add(int64(synthetic))
	if !s.flush() {
		// The journal keeps the peers: the next start marks them down.
		reason, detail = CloseSpoolFailed, "shutdown deadline passed before the spool accepted the last batch"
		synthetic = 0
	} else if s.journaled != nil {
		s.journalWrite(func(j *SessionJournal) error { return j.forget(s.id) })
		s.journaled = nil
	}
	s.releaseBuffer()
	l.m.syntheticDown.Add(float64(synthetic))
	l.m.closed.WithLabelValues(reason).Inc()
	attrs := []any{
		"router", s.source, "reason", reason, "messages", s.messages, "bytes", s.bytes,
		"synthetic_peer_downs", synthetic, "duration", time.Since(started).Round(time.Millisecond),
	}
	if detail != "" {
		attrs = append(attrs, "detail", detail)
	}
	l.log.Info("bmp session closed", attrs...)
}

// read frames and spools messages until the stream ends or fails, and says why.
// It returns with s.batch possibly non-empty; the caller flushes it.
func (s *session) read() (reason, detail string) {
	l := s.l
	maxBatch := l.cfg.BatchMessages
	s.deadline = deadlineInitiation
	_ = s.conn.SetReadDeadline(time.Now().Add(l.cfg.InitiationTimeout))

	// Allocate the framing buffer only once the router sends something, so
	// idle or hostile connections cost a goroutine and a socket, not a buffer.
	var first [HeaderLen]byte
	n, err := s.conn.Read(first[:])
	if n == 0 {
		return s.readFailure(err)
	}
	s.resize(initialReadBuffer)
	s.end = copy(s.buf, first[:n])

	for {
		msg, err := s.next() // may read: the batch is empty here
		if err != nil {
			return s.endOfStream(err)
		}
		s.initiated = true
		if s.batch == nil {
			s.batch = l.getBatch()
		}
		s.add(msg)
		// Collect what is already buffered without reading, so the slices in
		// the batch stay valid until the append below returns.
		for len(s.batch) < maxBatch && s.buffered() && l.batched.Load() < l.maxBatched {
			msg, err := s.next()
			if err != nil {
				return s.endOfStream(err)
			}
			s.add(msg)
		}
		if !s.flush() {
			return CloseSpoolFailed, "shutdown deadline passed before the spool accepted a batch"
		}
		if len(s.peers) > l.cfg.MaxPeers {
			return CloseTooManyPeers, fmt.Sprintf("%d peers up at once, more than max_peers %d", len(s.peers), l.cfg.MaxPeers)
		}
	}
}

// The session frames its stream itself rather than with a Framer because it
// manages its buffer under the listener's memory rules:
//   - it starts at initialReadBuffer and doubles towards read_buffer_bytes
//     only while reads keep filling it (the router is streaming), if the
//     budget allows; otherwise it simply stays smaller;
//   - a message larger than the buffer grows it only as the message's bytes
//     actually arrive (doubling whenever the buffer is full of it), so a
//     header claiming 1 MiB followed by silence costs nothing extra;
//   - once a large message is consumed the buffer shrinks back to
//     read_buffer_bytes.
//
// When a session needs more budget to hold a message and none is left, it
// waits instead of being closed: only that session stops reading (TCP
// pushes back on its router), and the clients holding the budget are either
// streaming (they finish their message and shrink) or stalled, and then
// closed by partial_timeout, which frees the budget. Closing the session
// instead would disconnect a good router sending one large message whenever
// a flood of bad clients has taken the budget; that router would reconnect
// and dump its whole table again. The wait is bounded (2×partial_timeout)
// so sessions waiting on one another cannot deadlock; ordinary messages need
// no budget at all, so routers keep streaming through a flood either way.

// Read deadline armed on the connection, which also names the close reason
// when it passes.
const (
	deadlineNone = iota
	deadlineInitiation
	deadlinePartial
	deadlineIdle
)

// buffered reports whether a whole message (or a framing error) is buffered,
// so next will not read.
func (s *session) buffered() bool {
	avail := s.end - s.start
	if avail < HeaderLen {
		return false
	}
	n, err := CheckHeader(s.buf[s.start:s.end], s.l.cfg.MaxMessageBytes)
	return err != nil || n <= avail
}

// next returns the next whole message, header included. The slice stays valid
// until a call that has to read (buffered is false).
func (s *session) next() ([]byte, error) {
	for {
		avail := s.end - s.start
		need := HeaderLen
		if avail >= HeaderLen {
			n, err := CheckHeader(s.buf[s.start:s.end], s.l.cfg.MaxMessageBytes)
			if err != nil {
				return nil, err
			}
			if n <= avail {
				msg := s.buf[s.start : s.start+n : s.start+n]
				s.start += n
				return msg, nil
			}
			need = n
		}
		if err := s.fill(need); err != nil {
			if errors.Is(err, io.EOF) && s.end > s.start {
				return nil, &FrameError{Reason: ReasonTruncated, Detail: fmt.Sprintf("stream ended inside a message (%d bytes pending)", s.end-s.start)}
			}
			return nil, err
		}
	}
}

// fill reads more bytes for a message of need bytes (header included),
// first moving pending bytes to the front and resizing the buffer.
func (s *session) fill(need int) error {
	cfg := &s.l.cfg
	if s.start > 0 || s.end == 0 {
		// Messages were consumed since the last read (or none is pending):
		// what is pending now is a new message.
		s.partialWait = 0
	}
	if s.start > 0 {
		s.end = copy(s.buf, s.buf[s.start:s.end])
		s.start = 0
	}
	switch {
	case s.end == len(s.buf):
		// Full of one message that does not fit: no progress without growing.
		if err := s.growFor(need); err != nil {
			return err
		}
	case s.grow:
		// The last read filled the buffer: the router is streaming. Growing
		// here rather than right after that read copies only the tail.
		if n := min(2*len(s.buf), cfg.ReadBufferBytes); n > len(s.buf) {
			// Throughput growth leaves one largest message's worth of
			// budget for message growth: buffers grown by routers that
			// then went idle (they keep them) must not starve the others.
			s.tryResize(n, s.charge(s.l.cfg.MaxMessageBytes))
		}
	case len(s.buf) > cfg.ReadBufferBytes && need <= cfg.ReadBufferBytes && s.end <= cfg.ReadBufferBytes:
		s.resize(cfg.ReadBufferBytes) // the large message is done: give the budget back
	}
	s.grow = false
	pending := s.end > 0
	start := time.Now()
	s.armDeadline(start)
	free := len(s.buf) - s.end
	n, err := s.conn.Read(s.buf[s.end:])
	if pending {
		s.partialWait += time.Since(start)
	}
	s.end += n
	if n > 0 {
		// Filling a sliver left behind a partial message proves nothing.
		s.grow = n == free && 2*n >= len(s.buf) && len(s.buf) < cfg.ReadBufferBytes
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// growFor doubles the buffer (up to need), waiting for budget if it must.
func (s *session) growFor(need int) error {
	l := s.l
	size := min(2*len(s.buf), need)
	if s.tryResize(size, 0) {
		return nil
	}
	l.m.budgetWaits.Inc()
	if n, ok := l.budgetLog.Allow(); ok {
		l.log.Warn("bmp read buffer budget used up; session waits before reading on",
			"router", s.source, "message_bytes", need, "buffered", s.end,
			"budget_bytes", l.cfg.BufferBudgetBytes, "suppressed_since_last", n)
	}
	// 2×: the sessions holding the budget when this one started waiting were
	// last seen making progress at the latest now, so any of them that is
	// stalled is closed within one partial_timeout.
	if !l.budget.reserve(l.done, 2*l.cfg.PartialTimeout, s.charge(size)-s.charge(len(s.buf))) {
		if l.closing.Load() {
			return errShutdown
		}
		return &budgetError{need: need, buffered: s.end}
	}
	s.realloc(size)
	return nil
}

// charge is how much of a buffer of n bytes counts against the budget.
func (s *session) charge(n int) int64 { return int64(max(n-initialReadBuffer, 0)) }

// tryResize resizes the buffer if the budget allows it, with keep bytes of
// it still left over.
func (s *session) tryResize(n int, keep int64) bool {
	if d := s.charge(n) - s.charge(len(s.buf)); d > 0 && !s.l.budget.tryReserve(d, keep) {
		return false
	}
	s.resize(n)
	return true
}

// resize replaces the buffer with one of n bytes holding the pending bytes
// (which must fit), settling the budget. Growth must already be reserved.
func (s *session) resize(n int) {
	if d := s.charge(len(s.buf)) - s.charge(n); d > 0 {
		s.l.budget.release(d)
	}
	s.realloc(n)
}

func (s *session) realloc(n int) {
	b := make([]byte, n)
	s.end = copy(b, s.buf[s.start:s.end])
	s.start = 0
	s.l.budget.total.Add(int64(n - len(s.buf)))
	s.buf = b
}

// releaseBuffer returns the session's buffer and its budget; the batch must
// have been flushed.
func (s *session) releaseBuffer() {
	s.l.budget.release(s.charge(len(s.buf)))
	s.l.budget.total.Add(-int64(len(s.buf)))
	s.buf, s.start, s.end = nil, 0, 0
}

// armDeadline sets the read deadline for a read starting at now. A message
// must arrive whole within partial_timeout of reading after its first byte,
// however it trickles in (time this side spends waiting for the spool or for
// budget does not count); otherwise idle_timeout applies, if set. Deadlines
// are re-armed only when they move by more than 1/64 of their length, so a
// streaming session does not reset its timer on every read.
func (s *session) armDeadline(now time.Time) {
	cfg := &s.l.cfg
	if !s.initiated {
		return // the initiation deadline set when the session started stands
	}
	kind, d, at := deadlineNone, time.Duration(0), time.Time{}
	if cfg.IdleTimeout > 0 {
		kind, d, at = deadlineIdle, cfg.IdleTimeout, now.Add(cfg.IdleTimeout)
	}
	if s.end > s.start {
		if p := now.Add(cfg.PartialTimeout - s.partialWait); kind == deadlineNone || p.Before(at) {
			kind, d, at = deadlinePartial, cfg.PartialTimeout, p
		}
	}
	if kind == deadlineNone {
		if s.deadline != deadlineNone {
			_ = s.conn.SetReadDeadline(time.Time{})
			s.deadline = deadlineNone
		}
		return
	}
	if kind == s.deadline && at.Sub(s.deadlineAt).Abs() < d/64 {
		return
	}
	_ = s.conn.SetReadDeadline(at)
	s.deadline, s.deadlineAt = kind, at
}

// errShutdown ends a session whose wait for budget was cut by Close.
var errShutdown = errors.New("bmp: listener closing")

// budgetError ends a session that could not get budget to hold a message.
type budgetError struct{ need, buffered int }

func (e *budgetError) Error() string {
	return fmt.Sprintf("no read buffer budget to hold a %d-byte message (%d bytes received) within 2×partial_timeout", e.need, e.buffered)
}

func (s *session) endOfStream(err error) (reason, detail string) {
	var fe *FrameError
	if errors.As(err, &fe) {
		s.l.m.framingErrors.WithLabelValues(fe.Reason).Inc()
		return fe.Reason, fe.Detail
	}
	var be *budgetError
	if errors.As(err, &be) {
		return CloseBufferBudget, be.Error()
	}
	if errors.Is(err, io.EOF) {
		return CloseEOF, ""
	}
	return s.readFailure(err)
}

func (s *session) readFailure(err error) (reason, detail string) {
	cfg := &s.l.cfg
	switch {
	case s.l.closing.Load() || errors.Is(err, errShutdown):
		return CloseShutdown, ""
	case errors.Is(err, io.EOF):
		return CloseEOF, ""
	case errors.Is(err, os.ErrDeadlineExceeded):
		switch s.deadline {
		case deadlineInitiation:
			return CloseInitiationTimeout, "no whole message within " + cfg.InitiationTimeout.String()
		case deadlinePartial:
			pending := s.end - s.start
			want := HeaderLen
			if pending >= HeaderLen {
				want, _ = CheckHeader(s.buf[s.start:s.end], cfg.MaxMessageBytes)
			}
			return ClosePartialTimeout, fmt.Sprintf("%d of %d bytes of a message received, not the whole message within %s of its first byte", pending, want, cfg.PartialTimeout)
		}
		return CloseIdleTimeout, "nothing received for " + cfg.IdleTimeout.String()
	case err == nil:
		return CloseReadError, "read returned no data"
	default:
		return CloseReadError, err.Error()
	}
}

func (s *session) add(msg []byte) {
	t := msg[5]
	switch MsgType(t) {
	case MsgPeerUp:
		if p, err := ParsePeerHeader(msg); err == nil {
			if s.peers == nil {
				s.peers = make(map[PeerKey][]byte)
			}
			// Copied: msg lives in the framer's buffer.
			s.peers[p.Key()] = bytes.Clone(msg[HeaderLen : HeaderLen+PerPeerHeaderLen])
			s.peersChanged = true
			s.own(p.Key(), true)
		}
	case MsgPeerDown:
		if p, err := ParsePeerHeader(msg); err == nil {
			delete(s.peers, p.Key())
			s.peersChanged = true
			s.rmKnown = false
			s.own(p.Key(), false)
		}
	case MsgRouteMonitoring:
		s.notePeer(msg)
	}
	i := typeIndex(t)
	s.nMsgs[i]++
	s.nBytes[i] += uint64(len(msg))
	s.batch = append(s.batch, record.Record{
		Kind:    record.KindBMP,
		Key:     s.key,
		Source:  s.source,
		Payload: msg,
	})
	s.l.batched.Add(1)
}

// peerIdentityLen is how much of the per-peer header names the peer: type,
// flags (for the V flag: how to read the address), distinguisher, address.
const peerIdentityLen = 26

// notePeer counts the peer of a Route Monitoring message as up when no Peer
// Up announced it: routers send Loc-RIB routes without a Loc-RIB Peer Up
// (FRR, GoBGP), and some instance peers' routes without one (IOS-XR). Such
// a peer is marked down with the others when the session ends, and kept in
// the session journal for a crash, so that the route state can treat its
// routes as stale; without this they were never withdrawn once the router
// stopped announcing them. One comparison of the message's peer with the
// previous message's on the common path; a parse and a look-up only when
// the peer changes.
func (s *session) notePeer(msg []byte) {
	if len(msg) < HeaderLen+PerPeerHeaderLen {
		return
	}
	id := msg[HeaderLen : HeaderLen+peerIdentityLen]
	// Flags but for V may differ between one peer's messages (pre- and
	// post-policy, Adj-RIB-In and -Out).
	if s.rmKnown && id[0] == s.rmPeer[0] && (id[1]^s.rmPeer[1])&0x80 == 0 && bytes.Equal(id[2:], s.rmPeer[2:]) {
		return
	}
	p, err := ParsePeerHeader(msg)
	if err != nil {
		return
	}
	copy(s.rmPeer[:], id)
	s.rmKnown = true
	if _, ok := s.peers[p.Key()]; ok {
		return
	}
	if s.peers == nil {
		s.peers = make(map[PeerKey][]byte)
	}
	// Copied: msg lives in the framer's buffer.
	s.peers[p.Key()] = bytes.Clone(msg[HeaderLen : HeaderLen+PerPeerHeaderLen])
	s.peersChanged = true
	s.own(p.Key(), true)
}

// own makes this session the owner of peer k (up), or lets go of it if it
// is the owner (down: the router's Peer Down, spooled by this session).
func (s *session) own(k PeerKey, up bool) {
	if s.router == nil {
		return
	}
	s.l.mu.Lock()
	if up {
		s.router.owner[k] = s
	} else if s.router.owner[k] == s {
		delete(s.router.owner, k)
	}
	s.l.mu.Unlock()
}

// waitEarlier waits while an earlier session of the router is ending, so
// that its last records (its synthetic peer-downs) reach the spool before
// this session's next ones. Free when the router has one session.
func (s *session) waitEarlier() {
	if s.router == nil || s.router.live.Load() < 2 {
		return
	}
	for {
		var wait chan struct{}
		s.l.mu.Lock()
		for _, o := range s.router.sessions {
			if o == s {
				break
			}
			if !o.ending {
				continue
			}
			select {
			case <-o.ended: // done, not yet removed from the list
			default:
				wait = o.ended
			}
			if wait != nil {
				break
			}
		}
		s.l.mu.Unlock()
		if wait == nil {
			return
		}
		s.l.m.orderWaits.Inc()
		select {
		case <-wait:
		case <-s.l.appendCtx.Done():
			return
		}
	}
}

// flush appends the batch, retrying with backoff until the spool accepts it
// or the listener's shutdown deadline passes. It reports whether the batch
// was spooled; the batch is emptied either way.
func (s *session) flush() bool {
	if len(s.batch) == 0 {
		return true
	}
	l := s.l
	s.waitEarlier()
	now := time.Now()
	for i := range s.batch {
		s.batch[i].Time = now
	}
	s.journalUp()
	backoff := 10 * time.Millisecond
	ok := true
	for {
		appendFn, ctx := l.spool.Append, l.runCtx
		if l.closing.Load() {
			appendFn, ctx = l.stopAppend, l.appendCtx
		}
		_, err := appendFn(ctx, s.batch...)
		if err == nil {
			break
		}
		if l.appendCtx.Err() != nil {
			ok = false
			break
		}
		if ctx.Err() != nil {
			continue // Close began while this waited for space: again, into the reserve
		}
		l.m.appendErrors.Inc()
		if !s.appendWarn {
			s.appendWarn = true
			l.log.Error("bmp spool append failed; retrying without reading further", "router", s.source, "err", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-l.appendCtx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, time.Second)
	}
	l.m.appendSeconds.Observe(time.Since(now).Seconds())

	var msgs uint64
	for i := range numTypes {
		if s.nMsgs[i] == 0 {
			continue
		}
		msgs += s.nMsgs[i]
		if ok {
			l.m.messages[i].Add(float64(s.nMsgs[i]))
			l.m.bytes[i].Add(float64(s.nBytes[i]))
			s.bytes += s.nBytes[i]
		}
		s.nMsgs[i], s.nBytes[i] = 0, 0
	}
	if ok {
		s.journalDown()
		s.messages += msgs
		if s.appendWarn {
			s.appendWarn = false
			l.log.Info("bmp spool append recovered", "router", s.source)
		}
	} else {
		l.m.dropped.Add(float64(msgs))
	}
	l.batched.Add(-int64(len(s.batch)))
	clear(s.batch) // drop references into the framer buffer
	// A session blocked in a read holds no batch: batches (up to
	// batch_messages records of ~100 bytes) go back to the listener's pool,
	// so only sessions that are spooling hold one, not every connection.
	l.putBatch(s.batch)
	s.batch = nil
	return ok
}

// journalUp records peers that came up in the batch before it is spooled, so
// the journal never lacks a peer the spool has up. Peers that went down stay
// in it until their Peer Down is spooled (journalDown).
func (s *session) journalUp() {
	if s.l.journal == nil || !s.peersChanged {
		return
	}
	var up map[PeerKey][]byte
	for k, h := range s.peers {
		if old, ok := s.journaled[k]; !ok || !bytes.Equal(old, h) {
			if up == nil {
				up = make(map[PeerKey][]byte)
			}
			up[k] = h
		}
	}
	if up == nil {
		return
	}
	if s.journalUpdate(up, nil) {
		if s.journaled == nil {
			s.journaled = make(map[PeerKey][]byte, len(s.peers))
		}
		maps.Copy(s.journaled, up)
	}
}

// journalDown drops the peers whose Peer Down was just spooled. Until the
// journal matches the session's peers again, the next flush retries.
func (s *session) journalDown() {
	if s.l.journal == nil || !s.peersChanged {
		return
	}
	var down []PeerKey
	for k := range s.journaled {
		if _, ok := s.peers[k]; !ok {
			down = append(down, k)
		}
	}
	if len(down) > 0 && s.journalUpdate(nil, down) {
		for _, k := range down {
			delete(s.journaled, k)
		}
	}
	s.peersChanged = !maps.EqualFunc(s.journaled, s.peers, bytes.Equal)
}

// journalUpdate writes the peers that came up (or changed) and forgets those
// that went down: only the change, so a session's journal writes stay in
// proportion to its Peer Ups and Downs, not to how many peers it has.
func (s *session) journalUpdate(up map[PeerKey][]byte, down []PeerKey) bool {
	e := journalEntry{Router: s.key, Source: s.source}
	return s.journalWrite(func(j *SessionJournal) error { return j.update(s.id, e, up, down) })
}

// journalWrite applies one change to the journal. A failure is counted and
// logged, and spooling goes on: the journal only serves a later crash.
func (s *session) journalWrite(fn func(*SessionJournal) error) bool {
	l := s.l
	if err := fn(l.journal); err != nil {
		l.m.journalErrors.Inc()
		if n, ok := l.journalLog.Allow(); ok {
			l.log.Error("bmp session journal write failed; a crash now would leave these peers up for consumers",
				"router", s.source, "err", err, "suppressed_since_last", n)
		}
		return false
	}
	return true
}
