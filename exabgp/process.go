package exabgp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/bgpedge/bgpedge/internal/lograte"
	"github.com/bgpedge/bgpedge/record"
)

// Spool is what the process needs of the spool: a durable append.
type Spool interface {
	Append(ctx context.Context, recs ...record.Record) (first uint64, err error)
}

// Options configure a Process.
type Options struct {
	Config  Config
	AgentID string
	// OpenSpool opens this instance's spool. It is retried with backoff while
	// it fails: the process keeps reading exaBGP meanwhile (degraded). The
	// caller owns the spool and closes it after Run returns.
	OpenSpool func() (Spool, error)
	// In is exaBGP's output (our stdin); Out is exaBGP's command input (our stdout).
	In  io.Reader
	Out io.Writer
	// NATS, if set, is used for route commands instead of connecting.
	NATS       *nats.Conn
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// eofGrace bounds how long the process keeps retrying the spool once exaBGP
// has closed stdin.
const eofGrace = 30 * time.Second

// drainTimeout bounds the final appends at shutdown (SIGTERM).
const drainTimeout = 5 * time.Second

// Process is bgpedge running as an exaBGP process.
type Process struct {
	opts  Options
	cfg   Config
	log   *slog.Logger
	m     *metrics
	cmd   *commander
	svc   *service
	queue chan record.Record
	// ups holds the neighbors whose session came up and still wait for
	// their replay, a set so that no trigger is ever dropped; upSignal
	// wakes the replayer.
	upsMu    sync.Mutex
	ups      map[string]struct{}
	upSignal chan struct{}
	// inFlight is the batch being appended; with the queue it makes the
	// queue depth gauge.
	inFlight atomic.Int64
	// readerStalled is set while the stdin reader waits for queue space.
	readerStalled atomic.Bool
	// writerGrace bounds the wait for the command writer at shutdown: a
	// write to exaBGP that is not reading cannot be interrupted.
	writerGrace time.Duration
	dropLog     lograte.Limiter
	truncLog    lograte.Limiter
	journal     *Journal
	// commands is whether route commands are served: configured, and the
	// journal could be read.
	commands bool
	// lineCounters are resolved once: the reader's hot path does no label lookup.
	lineCounters [4]prometheus.Counter
}

// JournalPath is where the injected routes are kept.
func (c Config) JournalPath() string { return filepath.Join(c.StateDir, "routes.json") }

// SpoolDir is this instance's spool directory.
func (c Config) SpoolDir() string { return filepath.Join(c.StateDir, "spool") }

// New builds a process; Run starts it.
func New(opts Options) (*Process, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.In == nil || opts.Out == nil || opts.OpenSpool == nil {
		return nil, errors.New("exabgp: In, Out and OpenSpool are required")
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	cfg := opts.Config
	policy, err := NewPolicy(cfg.Policy)
	if err != nil {
		return nil, err
	}
	j, commands := openJournal(cfg.JournalPath(), opts.Logger, m)
	m.injected.Set(float64(j.Len()))
	cmd := newCommander(opts.Out, cfg.Commands.AckTimeout, m, opts.Logger)
	var lc [4]prometheus.Counter
	for _, k := range []LineKind{LineEmpty, LineEvent, LineAck, LineOutput} {
		lc[k] = m.lines.WithLabelValues(k.String())
	}
	p := &Process{lineCounters: lc, commands: commands && cfg.Commands.Enabled,
		opts: opts, cfg: cfg, log: opts.Logger, m: m, cmd: cmd, journal: j,
		svc: &service{policy: policy, maxRoutes: cfg.Policy.MaxRoutes, journal: j, cmd: cmd,
			limiter: rate.NewLimiter(rate.Limit(cfg.Policy.RatePerSecond), cfg.Policy.RateBurst), m: m, log: opts.Logger},
		queue:       make(chan record.Record, cfg.QueueLines),
		upSignal:    make(chan struct{}, 1),
		writerGrace: drainTimeout,
	}
	cmd.stalled = p.readerStalled.Load
	if err := registerQueueDepth(opts.Registerer, p.queueDepth); err != nil {
		return nil, err
	}
	return p, nil
}

// queueDepth is the number of events read and not yet durable.
func (p *Process) queueDepth() float64 { return float64(len(p.queue)) + float64(p.inFlight.Load()) }

// openJournal opens the journal of injected routes. Its faults touch route
// commands only, never ingest: a journal that does not decode is set aside
// and a fresh one started (the routes it held are not announced again until
// central sends them again); one that cannot be read at all turns route
// commands off for this run. Either way every exaBGP event is still spooled.
func openJournal(path string, log *slog.Logger, m *metrics) (*Journal, bool) {
	j, err := OpenJournal(path)
	if err == nil {
		return j, true
	}
	empty := &Journal{path: path, ents: map[string]JournalEntry{}}
	if errors.Is(err, ErrJournalCorrupt) {
		aside := path + ".corrupt-" + time.Now().UTC().Format("20060102T150405Z")
		if rerr := os.Rename(path, aside); rerr == nil {
			m.journalFaults.WithLabelValues("corrupt").Inc()
			log.Error("journal of injected routes set aside and started empty: the routes it held are not announced again until central sends them",
				"path", path, "set_aside_as", aside, "err", err)
			return empty, true
		}
	}
	m.journalFaults.WithLabelValues("unreadable").Inc()
	log.Error("route commands off for this run: the journal of injected routes cannot be read; exaBGP events are spooled as usual",
		"path", path, "err", err)
	return empty, false
}

// Run reads exaBGP until its output ends (exaBGP stopped or restarts the
// process) and every event read is durable in the spool, or until ctx ends.
func (p *Process) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	cmdDone := make(chan struct{})
	go func() { defer close(cmdDone); p.cmd.run(ctx) }()
	defer func() {
		select {
		case <-cmdDone:
		case <-time.After(p.writerGrace):
			p.log.Warn("exabgp is not reading commands; stopping without waiting for the command writer", "waited", p.writerGrace)
		}
	}()
	defer cancel() // runs first: stops the goroutines waited for

	readerDone := make(chan error, 1)
	go func() { readerDone <- p.read() }() // never joined: a read on stdin cannot be interrupted

	spoolDone := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); spoolDone <- p.spool(ctx) }()

	wg.Add(1)
	go func() { defer wg.Done(); p.startup(ctx) }()

	if p.commands {
		nc := p.opts.NATS
		if nc == nil {
			var err error
			nc, err = ConnectNATS(p.cfg.Commands.NATS, "bgpedge-exabgp-"+p.opts.AgentID, p.log)
			if err != nil {
				p.log.Error("route commands disabled: cannot set up nats", "err", err)
			} else {
				defer nc.Close()
			}
		}
		if nc != nil {
			subject := p.cfg.Commands.Subject
			if subject == "" {
				subject = "bgpedge." + p.opts.AgentID + ".exabgp.command"
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.svc.serveNATS(ctx, nc, subject); err != nil {
					p.log.Error("route commands stopped", "err", err)
				}
			}()
		}
	}

	select {
	case err := <-readerDone:
		// exaBGP closed our stdin: finish spooling what was read, then stop.
		if err != nil {
			p.log.Warn("reading exabgp", "err", err)
		}
		select {
		case err := <-spoolDone:
			return err
		case <-ctx.Done():
			return nil // the spooler drains what it can (see drain)
		case <-time.After(eofGrace):
			// exaBGP is gone and the spool is not taking events (cannot open,
			// or appends keep failing): give up rather than linger forever.
			p.log.Error("spool unavailable after exabgp closed stdin; giving up", "grace", eofGrace)
			cancel()
			return <-spoolDone
		}
	case err := <-spoolDone:
		return err
	case <-ctx.Done():
		return nil
	}
}

// startup replays the injected routes (exaBGP may have restarted and lost
// them), asks for route refreshes, and replays towards sessions coming up.
func (p *Process) startup(ctx context.Context) {
	p.svc.replay(ctx, "")
	if p.cfg.RefreshOnStart {
		for _, f := range p.cfg.RefreshFamilies {
			if r := p.cmd.Do(ctx, "announce route-refresh "+f); r.result != ResultDone {
				p.log.Info("route refresh on start not acknowledged", "family", f, "result", r.result)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.upSignal:
			p.upsMu.Lock()
			ups := p.ups
			p.ups = nil
			p.upsMu.Unlock()
			for n := range ups {
				p.svc.replay(ctx, n)
			}
		}
	}
}

// read is the stdin reader. It never waits on the spool: it hands events to
// the bounded queue, and only blocks when that is full under policy block.
func (p *Process) read() error {
	br := bufio.NewReaderSize(p.opts.In, 1<<20)
	var long []byte
	defer close(p.queue)
	for {
		frag, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(long) < p.cfg.MaxLineBytes {
				long = append(long, frag...)
			}
			continue
		}
		line := frag
		if long != nil {
			long = append(long, frag...)
			line = long
		}
		if len(line) > 0 {
			p.handleLine(line)
		}
		long = nil
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read stdin: %w", err)
		}
	}
}

func (p *Process) handleLine(line []byte) {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	kind, ack := ClassifyLine(line)
	p.lineCounters[kind].Inc()
	switch kind {
	case LineEvent:
	case LineAck:
		p.cmd.onAck(ack)
		return
	case LineOutput:
		p.log.Debug("exabgp command output", "line", string(line))
		return
	default:
		return
	}
	if len(line) > p.cfg.MaxLineBytes {
		if n, ok := p.truncLog.Allow(); ok {
			p.log.Warn("exabgp line longer than max_line_bytes spooled truncated", "neighbor", string(peerOf(line)),
				"bytes", len(line), "max_line_bytes", p.cfg.MaxLineBytes, "suppressed_since_last", n)
		}
		line = line[:p.cfg.MaxLineBytes]
		p.m.truncated.Inc()
	}
	payload := append([]byte(nil), line...)
	rec := record.Record{Kind: record.KindExaBGP, Key: peerOf(payload), Time: time.Now(), Source: "exabgp", Payload: payload}
	if n, ok := stateUpPeer(payload); ok {
		p.upsMu.Lock()
		if p.ups == nil {
			p.ups = make(map[string]struct{})
		}
		p.ups[n] = struct{}{}
		p.upsMu.Unlock()
		select {
		case p.upSignal <- struct{}{}:
		default: // a wake-up is already pending; it takes the whole set
		}
	}
	select {
	case p.queue <- rec:
		return
	default:
	}
	if p.cfg.QueuePolicy == PolicyDrop {
		p.m.queueDropped.Inc()
		if n, ok := p.dropLog.Allow(); ok {
			p.log.Warn("exabgp event dropped: queue full (queue_policy drop)", "neighbor", string(rec.Key),
				"queue_lines", cap(p.queue), "suppressed_since_last", n)
		}
		return
	}
	// Blocked time is counted while it lasts, not only once the wait ends,
	// so a reader stuck behind a stalled spool shows on the dashboard.
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	p.readerStalled.Store(true)
	defer p.readerStalled.Store(false)
	for {
		select {
		case p.queue <- rec:
			p.m.readerBlocked.Add(time.Since(start).Seconds())
			return
		case now := <-tick.C:
			p.m.readerBlocked.Add(now.Sub(start).Seconds())
			start = now
		}
	}
}

// spool moves queued events into the spool in batches until the queue is
// closed and empty. It opens the spool itself, retrying while it fails, so
// a broken disk or config leaves the process reading (degraded) instead of
// exiting into exaBGP's respawn limit.
func (p *Process) spool(ctx context.Context) error {
	var sp Spool
	backoff := 100 * time.Millisecond
	for sp == nil {
		s, err := p.opts.OpenSpool()
		if err == nil {
			sp = s
			break
		}
		p.m.spoolErrors.WithLabelValues("open").Inc()
		p.log.Error("cannot open spool; events queue in memory until it opens", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return p.abandon(nil)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	p.m.spoolAvailable.Set(1)
	defer p.m.spoolAvailable.Set(0)
	batch := make([]record.Record, 0, p.cfg.BatchLines)
	for {
		batch = batch[:0]
		var rec record.Record
		var ok bool
		select {
		case rec, ok = <-p.queue:
		case <-ctx.Done():
			return p.drain(sp, nil)
		}
		if !ok {
			return nil
		}
		batch = append(batch, rec)
	fill:
		for len(batch) < p.cfg.BatchLines {
			select {
			case r, ok := <-p.queue:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		p.inFlight.Store(int64(len(batch)))
		backoff := 50 * time.Millisecond
		for {
			_, err := sp.Append(ctx, batch...)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return p.drain(sp, batch)
			}
			p.m.spoolErrors.WithLabelValues("append").Inc()
			p.log.Error("spool append failed; retrying", "err", err, "records", len(batch))
			select {
			case <-ctx.Done():
				return p.drain(sp, batch)
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
		}
		p.m.spooled.Add(float64(len(batch)))
		p.inFlight.Store(0)
	}
}

// drain is the shutdown path: the batch in hand and what is already queued
// get a few seconds to become durable.
func (p *Process) drain(sp Spool, pending []record.Record) error {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	defer p.inFlight.Store(0)
	if len(pending) > 0 {
		if _, err := sp.Append(ctx, pending...); err != nil {
			return p.abandon(pending)
		}
		p.m.spooled.Add(float64(len(pending)))
	}
	for {
		batch := make([]record.Record, 0, p.cfg.BatchLines)
	fill:
		for len(batch) < p.cfg.BatchLines {
			select {
			case r, ok := <-p.queue:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return nil
		}
		if _, err := sp.Append(ctx, batch...); err != nil {
			return p.abandon(batch)
		}
		p.m.spooled.Add(float64(len(batch)))
	}
}

// abandon counts the events that will not reach the spool at shutdown.
func (p *Process) abandon(batch []record.Record) error {
	p.inFlight.Store(0)
	n := len(batch) + len(p.queue)
	if n > 0 {
		p.m.lost.Add(float64(n))
		p.log.Error("stopping with events not spooled", "records", n)
	}
	return nil
}
