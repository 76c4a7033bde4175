package forwarder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/record"
)

// Source is what the forwarder needs from the spool.
type Source interface {
	// Read returns records with seq ≥ from, in order, blocking until at least
	// one exists or ctx is done.
	Read(ctx context.Context, from uint64, maxRecords int) ([]record.Record, error)
	// AckThrough marks every record ≤ seq delivered.
	AckThrough(seq uint64) error
	// FirstUnacked is where delivery resumes after a restart.
	FirstUnacked() uint64
}

// Sink names reported by ActiveSink: the names forwarder.sinks takes, and
// none while no sink is connected.
const (
	SinkKafka = "kafka"
	SinkNATS  = "nats"
	SinkFile  = "file"
	SinkNone  = "none"
)

// Forwarder drains a Source to the first healthy sink of forwarder.sinks.
type Forwarder struct {
	cfg    Config
	src    Source
	enc    Encoder
	sinks  []Sink // forwarder.sinks, most preferred first
	logger *slog.Logger
	m      *metrics

	active atomic.Value // string
	states stateClock

	stateMu sync.Mutex
	state   string // last logged state: a sink's name, <sink>-down, down

	// arenas[i] is used by encoder goroutine i; arenas[0] also by the
	// sequential path. encodeBatch runs in one goroutine at a time.
	// seqArena and seqBatch are the Sequencer goroutine's (pump): for the
	// messages it adds, and its state.
	arenas   []outArena
	seqArena outArena
	seqBatch seqBatch
	workers  int
	ordered  func(record.Record) bool // records a Parallel encoder must see alone
	seq      Sequencer                // nil unless the encoder keeps state across records
}

// Parallel marks an encoder as safe to call from several goroutines at
// once. Ordered reports the records that change state the encoding of later
// records reads (a BMP Peer Up: the Add-Path and ASN width of that peer's
// routes); the forwarder encodes such a record alone, after every record
// before it and before every record after it. A nil Ordered orders nothing.
// Outputs are handed to the sink in spool order whatever the encoder does.
type Parallel struct {
	Encoder
	Ordered func(rec record.Record) bool
}

// New builds a forwarder from cfg; it does not connect anything until Run.
func New(cfg Config, src Source, enc Encoder, logger *slog.Logger, reg prometheus.Registerer) (*Forwarder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "forwarder")
	sinks, err := buildSinks(cfg, logger, reg)
	if err != nil {
		return nil, err
	}
	return newForwarderSinks(cfg, src, enc, sinks, logger, reg)
}

// newForwarder builds a forwarder on a primary and an optional secondary sink (tests).
func newForwarder(cfg Config, src Source, enc Encoder, primary, secondary Sink, logger *slog.Logger, reg prometheus.Registerer) (*Forwarder, error) {
	sinks := []Sink{primary}
	if secondary != nil {
		sinks = append(sinks, secondary)
	}
	return newForwarderSinks(cfg, src, enc, sinks, logger, reg)
}

func newForwarderSinks(cfg Config, src Source, enc Encoder, sinks []Sink, logger *slog.Logger, reg prometheus.Registerer) (*Forwarder, error) {
	if src == nil || enc == nil || len(sinks) == 0 || slices.Contains(sinks, nil) {
		return nil, errors.New("forwarder: source, encoder and at least one sink are required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Forwarder{cfg: cfg, src: src, enc: enc, sinks: sinks, logger: logger, workers: 1}
	if p, ok := enc.(Parallel); ok {
		f.workers = cfg.Encoders
		if f.workers == 0 {
			f.workers = runtime.GOMAXPROCS(0)
		}
		f.ordered = p.Ordered
		if f.ordered == nil {
			f.ordered = func(record.Record) bool { return false }
		}
	}
	f.seq, _ = enc.(Sequencer)
	if p, ok := enc.(Parallel); ok {
		f.seq, _ = p.Encoder.(Sequencer)
	}
	f.arenas = make([]outArena, f.workers)
	for i := range f.arenas {
		// Also with a Sequencer, which keeps the keys it is passed: the
		// hash is taken by the encoders, in parallel, and the Sequencer's
		// goroutine hashes only the messages it adds (seqBatch.add).
		f.arenas[i].hashKeys = hashesKeys(sinks)
	}
	f.seqArena.hashKeys = f.seq != nil && hashesKeys(sinks)
	f.active.Store(SinkNone)
	f.states.init(SinkNone)
	names := make([]string, 0, len(sinks)+1)
	for _, s := range sinks {
		names = append(names, s.Name())
	}
	m, err := newMetrics(reg, &f.states, append(names, SinkNone))
	if err != nil {
		return nil, err
	}
	f.m = m
	return f, nil
}

// ActiveSink is the sink currently draining the spool (kafka, nats, file),
// or none while no sink is connected. The agent reports it on /readyz.
func (f *Forwarder) ActiveSink() string { return f.active.Load().(string) }

// Rank orders sinks by role for this forwarder: the first of
// forwarder.sinks ranks highest, none (and a sink not in the list) 0. A
// reload compares what the running forwarder delivers to with what the
// new one would reach by it.
func (f *Forwarder) Rank(sink string) int {
	for i, s := range f.sinks {
		if s.Name() == sink {
			return len(f.sinks) - i
		}
	}
	return 0
}

func (f *Forwarder) setActive(name string) {
	if f.active.Swap(name) != name {
		f.states.set(name)
		f.m.setActive(name)
	}
}

// transition logs a change of the forwarder's state once, however often
// the same state is re-entered (a retry loop), and reports whether it changed.
func (f *Forwarder) transition(state, msg string, args ...any) bool {
	f.stateMu.Lock()
	defer f.stateMu.Unlock()
	if f.state == state {
		return false
	}
	f.state = state
	level := slog.LevelWarn
	if state == f.sinks[0].Name() {
		level = slog.LevelInfo
	}
	f.logger.Log(context.Background(), level, msg, args...)
	return true
}

// Run drains the spool until ctx is done, then flushes what is in flight
// within forwarder.shutdown_timeout and closes the sinks. It returns nil
// on a clean stop and an error only for a broken source.
//
// The sinks are tried in the order of forwarder.sinks: a sink that has
// failed for failover_after gives way to the next one; while a later sink
// drains, the earlier ones are probed, and the first that has been healthy
// for failback_after takes over again. When the last sink fails too, the
// spool grows and the list is tried again from its start after a backoff.
func (f *Forwarder) Run(ctx context.Context) error {
	n := len(f.sinks)
	var (
		level     int                    // the sink tried now
		downSince = make([]time.Time, n) // when each sink's current outage began
		logged    = make([]bool, n)      // each sink's current outage has been logged
		bo        = backoff{min: f.cfg.BackoffMin, max: f.cfg.BackoffMax}
	)
	defer f.setActive(SinkNone)
	for ctx.Err() == nil {
		name := f.sinks[level].Name()
		var stop chan struct{}
		back := -1 // the earlier sink to return to, set before stop closes
		probeDone := make(chan struct{})
		pctx, cancelProbe := context.WithCancel(ctx)
		if level > 0 {
			stop = make(chan struct{})
			go func() {
				defer close(probeDone)
				if j := f.watchEarlier(pctx, level); j >= 0 {
					back = j
					close(stop)
				}
			}()
		} else {
			close(probeDone)
		}
		res, err := f.session(ctx, level, stop)
		cancelProbe()
		<-probeDone
		if err != nil {
			return err
		}
		if closed(stop) {
			f.logger.Info(f.sinks[back].Name()+" healthy again, returning to it", "from", name, "healthy_for", f.cfg.FailbackAfter)
			for k := back; k < n; k++ {
				downSince[k], logged[k] = time.Time{}, false
			}
			level = back
			bo.reset()
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if res.delivered {
			downSince[level], logged[level] = time.Time{}, false
			bo.reset()
		}
		if downSince[level].IsZero() {
			downSince[level] = res.failedAt
			if downSince[level].IsZero() {
				downSince[level] = time.Now()
			}
		}
		if level == n-1 && n > 1 {
			f.transition("down", "every sink unavailable, the spool grows until one returns", "sinks", f.cfg.SinkOrder(), "err", res.err)
			level = 0 // the list again from its start
			if !bo.sleep(ctx) {
				return nil
			}
			continue
		}
		if !logged[level] {
			args := []any{"err", res.err}
			if level+1 < n {
				args = append(args, "failover_after", f.cfg.FailoverAfter, "next", f.sinks[level+1].Name())
			}
			f.transition(name+"-down", name+" unavailable, retrying with backoff", args...)
			logged[level] = true
		}
		f.logger.Debug(name+" still unavailable", "err", res.err)
		if level+1 < n && time.Since(downSince[level]) >= f.cfg.FailoverAfter {
			level++
			continue
		}
		wait := bo.next()
		if level+1 < n {
			if left := f.cfg.FailoverAfter - time.Since(downSince[level]); left < wait {
				wait = max(left, 0)
			}
		}
		if !sleepCtx(ctx, wait) {
			return nil
		}
	}
	return nil
}

// Reach reports the best sink this forwarder can reach now without draining
// anything: the first of forwarder.sinks whose probe answers, else none;
// err says why the sinks before the one reached (all of them, for none)
// failed. A reload asks it so that new settings never replace a forwarder
// that delivers with one that would deliver less.
func (f *Forwarder) Reach(ctx context.Context) (string, error) {
	return reach(ctx, f.sinks...)
}

// Reach is Forwarder.Reach for cfg without a forwarder: `bgpedge config
// validate --probe` asks it before a reload.
func Reach(ctx context.Context, cfg Config, logger *slog.Logger) (string, error) {
	if err := cfg.Validate(); err != nil {
		return SinkNone, err
	}
	sinks, err := buildSinks(cfg, logger, nil)
	if err != nil {
		return SinkNone, err
	}
	return reach(ctx, sinks...)
}

func reach(ctx context.Context, sinks ...Sink) (string, error) {
	var errs []error
	for _, s := range sinks {
		var probe func(context.Context) error
		switch p := s.(type) {
		case interface{ probeConnect(context.Context) error }:
			probe = p.probeConnect
		case Prober:
			probe = p.Probe
		default:
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout(s))
		err := probe(pctx)
		cancel()
		if err == nil {
			return s.Name(), errors.Join(errs...)
		}
		errs = append(errs, err)
	}
	return SinkNone, errors.Join(errs...)
}

// watchEarlier probes the sinks before sinks[level] until one of them has
// been healthy for failback_after without interruption, and returns its
// index; -1 once ctx ends first. A sink that cannot be probed is not
// returned to while a later one works.
func (f *Forwarder) watchEarlier(ctx context.Context, level int) int {
	healthySince := make([]time.Time, level)
	t := time.NewTicker(f.cfg.ProbeInterval)
	defer t.Stop()
	for {
		for j, s := range f.sinks[:level] {
			p, ok := s.(Prober)
			if !ok {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, probeTimeout(s))
			err := p.Probe(pctx)
			cancel()
			switch {
			case ctx.Err() != nil:
				return -1
			case err != nil:
				healthySince[j] = time.Time{}
			case healthySince[j].IsZero():
				healthySince[j] = time.Now()
			}
			if !healthySince[j].IsZero() && time.Since(healthySince[j]) >= f.cfg.FailbackAfter {
				return j
			}
		}
		select {
		case <-ctx.Done():
			return -1
		case <-t.C:
		}
	}
}

type sessionResult struct {
	delivered bool      // at least one message was acknowledged
	err       error     // why the sink session ended (nil: ctx or stop)
	failedAt  time.Time // when it failed: the outage starts there, not after the flush
}

// session connects sinks[level] and drains the spool into it until ctx ends, stop
// closes, or the sink fails. It returns an error only when the source fails.
func (f *Forwarder) session(ctx context.Context, level int, stop <-chan struct{}) (sessionResult, error) {
	sink := f.sinks[level]
	name := sink.Name()
	cctx, cancel := context.WithTimeout(ctx, connectTimeout(sink))
	err := sink.Connect(cctx)
	cancel()
	if err != nil {
		f.m.errors.WithLabelValues(name, "connect").Inc()
		return sessionResult{err: err, failedAt: time.Now()}, nil
	}
	f.setActive(name)
	defer f.setActive(SinkNone)
	if level > 0 {
		var earlier []string
		for _, s := range f.sinks[:level] {
			earlier = append(earlier, s.Name())
		}
		if f.transition(name, "draining to "+name+" while "+strings.Join(earlier, " and ")+" unavailable") {
			f.m.failovers.Inc()
		}
	} else {
		f.transition(name, "draining to "+name)
	}

	sctx, cancelSession := context.WithCancel(ctx)
	defer cancelSession()
	if stop != nil {
		go func() {
			select {
			case <-stop:
				cancelSession()
			case <-sctx.Done():
			}
		}()
	}
	msgCount, byteCount := f.m.messages.WithLabelValues(name), f.m.bytes.WithLabelValues(name)
	tr := newTracker(cancelSession)
	// The messages and bytes delivered reach their counters at each
	// commit, not per ack: two atomic float additions a message were a
	// per cent of the agent's CPU.
	var countedMsgs, countedBytes uint64
	count := func() {
		msgs, bytes := tr.delivered()
		msgCount.Add(float64(msgs - countedMsgs))
		byteCount.Add(float64(bytes - countedBytes))
		countedMsgs, countedBytes = msgs, bytes
	}

	// Acks reach the spool from a ticker, not per message: AckThrough is a
	// spool transaction.
	var ackErr error
	var ackWG sync.WaitGroup
	ackStop := make(chan struct{})
	commit := func() {
		wm, n := tr.watermark()
		count() // after the watermark: it counts every message below it
		if n > 0 {
			f.m.records.WithLabelValues(name).Add(float64(n))
			// The encoder's state first: a crash between the two then
			// re-delivers records the state already holds, never the reverse.
			if f.seq != nil {
				if err := f.seq.CommitThrough(wm); err != nil {
					if ackErr == nil {
						ackErr = fmt.Errorf("encoder state commit: %w", err)
						cancelSession()
					}
					return
				}
			}
			if err := f.src.AckThrough(wm); err != nil && ackErr == nil {
				ackErr = fmt.Errorf("spool ack: %w", err)
				cancelSession()
			}
			f.m.ackedSeq.Set(float64(wm))
		}
	}
	ackWG.Add(1)
	go func() {
		defer ackWG.Done()
		t := time.NewTicker(f.cfg.AckInterval)
		defer t.Stop()
		for {
			select {
			case <-ackStop:
				return
			case <-t.C:
				commit()
			}
		}
	}()

	limit := f.cfg.Kafka.MaxMessageBytes
	if pl, ok := sink.(PayloadLimiter); ok && pl.MaxPayload() > 0 && pl.MaxPayload() < limit {
		limit = pl.MaxPayload()
	}
	readErr := f.pump(sctx, sink, tr, limit)

	// Flush: wait for what is in flight, bounded, then close the sink.
	fctx, cancelFlush := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.ShutdownTimeout)
	if tr.failure() == nil {
		tr.drain(fctx)
	}
	if err := sink.Close(fctx); err != nil {
		f.logger.Warn("sink close", "sink", name, "err", err)
	}
	cancelFlush()
	close(ackStop)
	ackWG.Wait()
	commit()

	delivered, _ := tr.delivered()
	res := sessionResult{delivered: delivered > 0, err: tr.failure(), failedAt: tr.failedSince()}
	// Writes cut short because the session was ended on purpose (shutdown,
	// or failback from NATS), cancelled or failed by the bounded final
	// flush, are not the sink's failure.
	deliberate := ctx.Err() != nil || closed(stop)
	if res.err != nil && !deliberate {
		f.m.errors.WithLabelValues(name, "write").Inc()
	}
	if ackErr != nil {
		return res, ackErr
	}
	if readErr != nil && ctx.Err() == nil && sctx.Err() == nil {
		return res, readErr
	}
	return res, nil
}

// closed reports whether ch is closed; a nil ch never is.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// pump reads, encodes and writes until ctx ends or the session fails.
// limit is the largest message the sink takes. The three steps overlap: a
// reader goroutine reads the next batch and an encoder goroutine encodes it
// while this one hands the previous batch to the sink; each holds at most
// one batch, so memory stays bounded by read_batch records plus what
// max_in_flight and max_in_flight_bytes let the sink hold.
func (f *Forwarder) pump(ctx context.Context, sink Sink, tr *tracker, limit int) error {
	ctx, cancel := context.WithCancel(ctx)
	reads := make(chan []record.Record, 1)
	outs := make(chan *encodedBatch, 1)
	var readErr, seqErr error
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	if f.seq != nil {
		if err := f.seq.Rewind(f.src.FirstUnacked()); err != nil {
			return fmt.Errorf("encoder state rewind: %w", err)
		}
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(reads)
		from := f.src.FirstUnacked()
		for {
			recs, err := f.src.Read(ctx, from, f.cfg.ReadBatch)
			if err != nil {
				if ctx.Err() == nil {
					readErr = fmt.Errorf("spool read: %w", err)
				}
				return
			}
			if len(recs) == 0 {
				continue
			}
			from = recs[len(recs)-1].Seq + 1
			select {
			case reads <- recs:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Encoded batches: with a Sequencer, it runs in a goroutine of its
	// own, on one batch while the next is encoded (its work is in record
	// order, the encoding's is spread over the workers).
	encoded := outs
	if f.seq != nil {
		encoded = make(chan *encodedBatch, 1)
	}
	send := func(ch chan<- *encodedBatch, b *encodedBatch) bool {
		select {
		case ch <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	go func() {
		defer wg.Done()
		defer close(encoded)
		for recs := range reads {
			if !send(encoded, f.encodeBatch(recs, limit)) {
				return
			}
		}
	}()
	if f.seq != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(outs)
			for b := range encoded {
				err := f.sequenceBatch(ctx, b, func(b *encodedBatch) bool { return send(outs, b) })
				if err != nil {
					if ctx.Err() == nil {
						seqErr = err
						cancel()
					}
					// Unblock the encoder (ctx is done now).
					for range encoded {
					}
					return
				}
			}
		}()
	}
	for b := range outs {
		if !f.handOver(ctx, sink, tr, b) {
			// What of this batch is not registered, or registered open,
			// holds the watermark: a failed or stopped session re-reads
			// it from there next time.
			return nil
		}
	}
	// The reader stopped: on its own error, or because ctx ended.
	if seqErr != nil {
		return seqErr
	}
	return readErr
}

// handPart is the most messages handed to the sink at once (handOver
// also keeps a part within a quarter of the in-flight limits). A batch
// waits for room in parts, not whole: waiting until a whole read batch
// fit let what is in flight drop by a batch (thousands of messages) before
// each hand-over, and the Kafka lanes, one request on the wire per broker,
// then ran dry between batches unless max_in_flight_bytes held several.
const handPart = 512

// handOver registers b's records with the tracker and hands its messages
// to the sink, handPart at a time, each part once it fits in flight. A
// record whose messages span two parts is registered open with the first
// (the watermark stays below it until its last part is in). It reports
// false once the session ends (ctx, a failed sink).
func (f *Forwarder) handOver(ctx context.Context, sink Sink, tr *tracker, b *encodedBatch) bool {
	ri, rdone := 0, 0 // the next record to register, and how many of its messages are
	// A part also stays within a quarter of each limit (but holds at least
	// one message): large messages or small limits are handed over a few
	// at a time rather than let through beyond them.
	most, mostBytes := min(handPart, max(1, f.cfg.MaxInFlight/4)), max(1, f.cfg.MaxInFlightBytes/4)
	for off := 0; off < len(b.msgs) || ri < len(b.recs); {
		end, size := off, 0
		for end < len(b.msgs) && end-off < most {
			n := msgBytes(b.msgs[end])
			if end > off && size+n > mostBytes {
				break
			}
			size += n
			end++
		}
		if err := tr.waitRoom(ctx, end-off, size, f.cfg.MaxInFlight, f.cfg.MaxInFlightBytes); err != nil {
			return false
		}
		for pos := off; ri < len(b.recs); {
			left := b.counts[ri] - rdone
			if pos+left <= end {
				tr.addPart(b.recs[ri].Seq, left, b.open != nil && b.open[ri])
				pos += left
				ri, rdone = ri+1, 0
				continue
			}
			if k := end - pos; k > 0 {
				tr.addPart(b.recs[ri].Seq, k, true)
				rdone += k
			}
			break
		}
		if end == off && ri < len(b.recs) {
			// Counts that do not add up to the messages (cannot happen):
			// register the rest rather than loop; the watermark then
			// waits on messages never sent, and nothing is lost.
			f.logger.Error("encoded batch: message counts exceed its messages; the watermark stops here until the session restarts",
				"seq", b.recs[ri].Seq, "records_left", len(b.recs)-ri)
			for ; ri < len(b.recs); ri, rdone = ri+1, 0 {
				tr.addPart(b.recs[ri].Seq, b.counts[ri]-rdone, b.open != nil && b.open[ri])
			}
		}
		if end > off {
			tr.addBytes(size)
			if err := sink.Write(ctx, b.msgs[off:end], tr.ack); err != nil {
				return false
			}
		}
		off = end
	}
	return true
}

// seqPart bounds the messages of one part of a record a Sequencer expands
// (a Peer Down withdrawing a million routes), so that memory stays bounded
// by the in-flight limits rather than by the size of the expansion.
const seqPart = 4096

// sequenceBatch passes b's records in order through the Sequencer and sends
// what it emits, cutting a batch whenever it reaches seqPart messages; a
// record cut that way is sent open, in several parts.
func (f *Forwarder) sequenceBatch(ctx context.Context, b *encodedBatch, send func(*encodedBatch) bool) error {
	sb := &f.seqBatch
	if sb.emit == nil {
		sb.emit = sb.add
	}
	// Room for a second message per route event (the route state's).
	sb.f, sb.ctx, sb.send = f, ctx, send
	// The first batch out takes b's records and counts in place (b is
	// this goroutine's and used by nothing else): it never holds more
	// records than were read from b, and its entry for a record is written
	// after that record was read. Batches after a cut get their own.
	sb.out = &encodedBatch{msgs: make([]*Outgoing, 0, min(seqPart, 2*len(b.msgs)+16)),
		recs: b.recs[:0], counts: b.counts[:0]}
	defer func() { sb.ctx, sb.send, sb.out = nil, nil, nil }()
	pf, _ := f.seq.(Prefetcher)
	off, fetched := 0, 0 // fetched: the messages passed to Prefetch
	for i, rec := range b.recs {
		msgs := b.msgs[off : off+b.counts[i]]
		if pf != nil && off+len(msgs) > fetched {
			from := fetched
			fetched = min(len(b.msgs), max(off+len(msgs), fetched+prefetchMsgs))
			pf.Prefetch(b.msgs[from:fetched])
		}
		off += b.counts[i]
		sb.rec, sb.n = rec, 0
		if err := f.seq.Sequence(rec, msgs, sb.emit); err != nil {
			return fmt.Errorf("sequence record %d: %w", rec.Seq, err)
		}
		sb.out.recs, sb.out.counts = append(sb.out.recs, rec), append(sb.out.counts, sb.n)
	}
	if len(sb.out.recs) > 0 && !send(sb.out) {
		return ctx.Err()
	}
	return nil
}

// prefetchMsgs is how many messages ahead a Prefetcher is told of: enough
// for a run of memory reads to overlap, few enough that what it reads is
// still cached when Sequence gets there.
const prefetchMsgs = 16

// seqBatch is sequenceBatch's state for the record being sequenced, with
// its emit function bound once: a closure per record cost two allocations
// a record.
type seqBatch struct {
	f    *Forwarder
	ctx  context.Context
	send func(*encodedBatch) bool
	out  *encodedBatch
	rec  record.Record
	n    int // messages of rec in out
	emit func(*Outgoing) error
}

func (sb *seqBatch) add(m *Outgoing) error {
	f, rec := sb.f, &sb.rec
	if m.ID == "" {
		// A message the Sequencer added.
		m.Seq = rec.Seq
		m.ID = f.seqArena.id(f.cfg.AgentID, rec.Seq, m.Index)
		m.Headers = nil
		m.implied, m.kind, m.router, m.agent = true, rec.Kind.String(), rec.Source, f.cfg.AgentID
	}
	if f.seqArena.hashKeys && len(m.Key) > 0 {
		switch {
		case !m.hashed:
			// A message the Sequencer added. As outArena.add does: the
			// Sequencer has just written it, the sink would find its key
			// out of the cache.
			m.keyHash, m.hashed = keyHash(m.Key), true
		case raceEnabled && keyHash(m.Key) != m.keyHash:
			return fmt.Errorf("record %d: the sequencer changed the key of message %d (%s)", rec.Seq, m.Index, m.Stream)
		}
	}
	out := sb.out
	out.msgs = append(out.msgs, m)
	msgBytes(m) // computed here, in the Sequencer's goroutine, and kept
	sb.n++
	if len(out.msgs) < seqPart {
		return nil
	}
	out.recs, out.counts = append(out.recs, *rec), append(out.counts, sb.n)
	out.open = append(make([]bool, len(out.recs)-1, len(out.recs)), true)
	if !sb.send(out) {
		return sb.ctx.Err()
	}
	sb.out, sb.n = &encodedBatch{}, 0
	return nil
}

// encodedBatch is a read batch encoded: its messages in record order, and
// how many each record made.
type encodedBatch struct {
	recs   []record.Record
	counts []int
	open   []bool // nil, or per record: more of its messages follow in the next batch
	msgs   []*Outgoing
}

// encodedRun is what one encoder goroutine made of a chunk of a batch.
type encodedRun struct {
	arena *outArena
	msgs  []*Outgoing
}

// minChunk is the fewest records worth a goroutine of their own.
const minChunk = 64

// encodeBatch encodes recs. With a Parallel encoder and more than one
// encoder goroutine, runs of records that are not Ordered are cut into
// chunks encoded at once, each into its own arena; an Ordered record is
// encoded alone, after everything before it and before everything after.
// Output order is record order either way.
func (f *Forwarder) encodeBatch(recs []record.Record, limit int) *encodedBatch {
	b := &encodedBatch{recs: recs, counts: make([]int, len(recs))}
	parallel := f.workers > 1 && len(recs) >= 2*minChunk
	if !parallel {
		b.msgs = make([]*Outgoing, 0, len(recs))
		for i := range recs {
			n := len(b.msgs)
			b.msgs = f.encodeWith(&f.arenas[0], recs[i], b.msgs, limit)
			b.counts[i] = len(b.msgs) - n
		}
	} else {
		// Each goroutine appends a chunk's messages to a slice of its
		// arena's (reused from batch to batch: only the join below reads
		// it) and counts them per record; the runs are joined in record
		// order at the end.
		var wg sync.WaitGroup
		var runs []encodedRun
		encodeRun := func(a *outArena, lo, hi int) []*Outgoing {
			out := a.run[:0]
			for i := lo; i < hi; i++ {
				n := len(out)
				out = f.encodeWith(a, recs[i], out, limit)
				b.counts[i] = len(out) - n
			}
			a.run = out
			return out
		}
		run := func(lo, hi int) { // recs[lo:hi] have no Ordered record
			n := hi - lo
			chunks := min(f.workers, max(1, n/minChunk))
			size := (n + chunks - 1) / chunks
			first := len(runs)
			// Room for every run first: the goroutines write into runs.
			runs = slices.Grow(runs, chunks)[:first+chunks]
			for c := range chunks {
				clo, chi := lo+c*size, min(hi, lo+(c+1)*size)
				if clo >= chi {
					runs = runs[:first+c]
					break
				}
				// Through a pointer taken now: runs itself may be
				// resliced below while the goroutines run.
				dst, a := &runs[first+c], &f.arenas[c]
				wg.Add(1)
				go func() {
					defer wg.Done()
					*dst = encodedRun{arena: a, msgs: encodeRun(a, clo, chi)}
				}()
			}
			wg.Wait()
			// The joins below would be wrong once an arena's run is
			// reused: copy what this pass made before the next one.
			for _, r := range runs[first:] {
				b.msgs = append(b.msgs, r.msgs...)
				clear(r.arena.run)
			}
			runs = runs[:first]
		}
		lo := 0
		b.msgs = make([]*Outgoing, 0, 2*len(recs))
		for i := range recs {
			if f.ordered(recs[i]) {
				run(lo, i)
				b.msgs = append(b.msgs, encodeRun(&f.arenas[0], i, i+1)...)
				clear(f.arenas[0].run)
				lo = i + 1
			}
		}
		run(lo, len(recs))
	}
	if f.seq == nil {
		// Each message's size is computed once, here, in the encoder's
		// goroutine rather than in the hand-over's (msgBytes keeps it). A
		// Sequencer may change the messages: it computes them for what it
		// emits.
		for _, m := range b.msgs {
			msgBytes(m)
		}
	}
	return b
}

// encode appends rec's output messages, or one dead letter, to out; limit
// is the largest message the sink takes.
func (f *Forwarder) encode(rec record.Record, out []*Outgoing, limit int) []*Outgoing {
	return f.encodeWith(&f.arenas[0], rec, out, limit)
}

// encodeWith is encode with messages carved from a; one goroutine at a time
// uses an arena.
func (f *Forwarder) encodeWith(a *outArena, rec record.Record, out []*Outgoing, limit int) []*Outgoing {
	start := len(out)
	if a.emit == nil {
		// Made once per arena: a closure per record cost an allocation
		// for it and one for the slice it appends to.
		a.emit = a.add
	}
	a.seq, a.out = rec.Seq, out
	err := f.safeEncode(rec, a.emit)
	out, a.out = a.out, nil
	if err != nil {
		out = out[:start]
		if m := f.deadLetter(a, rec, err, limit); m != nil {
			out = append(out, m)
		}
		return out
	}
	msgs := out[start:]
	for _, m := range msgs {
		if size := len(m.Key) + len(m.Value); size > limit-messageOverhead {
			// Brokers reject it for ever (message.max.bytes, NATS
			// max_payload): retrying would block the queue.
			out = out[:start]
			if dl := f.deadLetter(a, rec, fmt.Errorf("%w: a %s message of %d bytes (limit %d: the smaller of forwarder.kafka.max_message_bytes and the sink's own)",
				ErrTooLarge, m.Stream, size, limit), limit); dl != nil {
				out = append(out, dl)
			}
			return out
		}
	}
	if !uniqueIndexes(msgs) {
		// Ids must be unique (JetStream drops a repeated Nats-Msg-Id as a
		// duplicate): number by emit order instead.
		for i, m := range msgs {
			m.Index = i
			if len(msgs) == 1 {
				m.Index = -1
			}
		}
	}
	for _, m := range msgs {
		m.ID = a.id(f.cfg.AgentID, rec.Seq, m.Index)
		m.implied, m.kind, m.router, m.agent = true, rec.Kind.String(), rec.Source, f.cfg.AgentID
	}
	return out
}

// safeEncode turns an encoder panic into an error. A record that crashes its
// decoder would otherwise crash the process again on every restart, since
// it stays first in the spool: bgpedge exabgp would crash-loop until exaBGP
// gives up on it, and bgpedge run would stop draining for good.
func (f *Forwarder) safeEncode(rec record.Record, emit func(record.Output)) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f.m.panics.Inc()
			f.logger.Error("encoder panicked; record handled as undecodable", "seq", rec.Seq, "kind", rec.Kind, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrEncoderPanic, r)
		}
	}()
	return f.enc.Encode(rec, emit)
}

// ErrEncoderPanic marks a record whose encoder panicked.
var ErrEncoderPanic = errors.New("encoder panicked")

// ErrTooLarge marks a record whose output exceeds the message size limit.
var ErrTooLarge = errors.New("output message too large")

// messageOverhead is what headers and framing may take of a message;
// minMessageBytes leaves a dead letter room for its key (up to 1 KiB) and
// some payload.
const (
	messageOverhead = 2048
	minMessageBytes = 16 << 10
)

// deadLetter makes the dlq message for a record that cannot be forwarded,
// or returns nil (counted, logged) when the dlq is disabled. The raw payload
// is cut to the size limit; bgpedge-error says why.
func (f *Forwarder) deadLetter(a *outArena, rec record.Record, cause error, limit int) *Outgoing {
	if !f.cfg.DLQ.Enabled {
		f.m.deadLetters.WithLabelValues("dropped").Inc()
		f.logger.Warn("record cannot be forwarded, dropped (dlq disabled)", "seq", rec.Seq, "kind", rec.Kind, "err", cause)
		return nil
	}
	f.m.deadLetters.WithLabelValues("sent").Inc()
	f.logger.Debug("record cannot be forwarded, sent to dlq", "seq", rec.Seq, "kind", rec.Kind, "err", cause)
	key := rec.Key
	if len(key) > 1024 {
		key = key[:1024]
	}
	value := rec.Payload
	if room := max(0, limit-messageOverhead-len(key)); len(value) > room {
		value = value[:room]
	}
	m := &Outgoing{Seq: rec.Seq, Index: -1, ID: MessageID(f.cfg.AgentID, rec.Seq, -1), Stream: StreamDLQ, Key: key, Value: value}
	m.Headers = f.headers(a, rec, m, Header{Key: HeaderError, Value: cause.Error()})
	return m
}

// uniqueIndexes reports whether the encoder gave every message of a record
// its own index (≥ -1, -1 only for a lone message).
func uniqueIndexes(msgs []*Outgoing) bool {
	switch len(msgs) {
	case 0:
		return true
	case 1:
		return msgs[0].Index >= -1
	}
	if len(msgs) <= 16 {
		for i, a := range msgs {
			if a.Index < 0 {
				return false
			}
			for _, b := range msgs[:i] {
				if a.Index == b.Index {
					return false
				}
			}
		}
		return true
	}
	seen := make(map[int]struct{}, len(msgs))
	for _, m := range msgs {
		if _, dup := seen[m.Index]; dup || m.Index < 0 {
			return false
		}
		seen[m.Index] = struct{}{}
	}
	return true
}

func (f *Forwarder) headers(a *outArena, rec record.Record, m *Outgoing, extra ...Header) []Header {
	h := a.headers(5 + len(extra))
	h = append(h,
		Header{HeaderID, m.ID},
		Header{HeaderKind, rec.Kind.String()},
		Header{HeaderRouter, rec.Source},
		Header{HeaderAgent, f.cfg.AgentID},
		Header{HeaderStream, m.Stream})
	return append(h, extra...)
}

// outArena hands out output messages, their headers and ids from chunks
// instead of three or four allocations per message: at 200 B records the
// allocations, and the garbage collection they cause, cost as much CPU as
// the encoding itself. A slot is handed out once and never reused; a chunk
// is garbage once every message carved from it has been acknowledged.
type outArena struct {
	msgs []Outgoing
	hdrs []Header
	ids  []byte

	// run is the slice encodeBatch's goroutine on this arena appends a
	// chunk's messages to, kept for the next batch once they are copied.
	run []*Outgoing

	// The record being encoded: add appends its messages to out.
	seq  uint64
	out  []*Outgoing
	emit func(record.Output) // a.add, bound once

	// hashKeys: a sink partitions by the key's hash (Kafka), taken by add.
	hashKeys bool
}

// add is the emit function of the record being encoded.
func (a *outArena) add(m record.Output) {
	o := a.msg()
	// The message keeps its output's Owner, released by the tracker once
	// the sink acknowledged it. A Sequencer reads nothing of a message
	// once it emitted it; one that adds a message sharing another's
	// bytes holds them once more (Outgoing.Share), one that drops a
	// message lets go of them (Outgoing.Discard).
	*o = Outgoing{Seq: a.seq, Index: m.Index, Stream: m.Stream, Key: m.Key, Value: m.Value, owner: m.Owner}
	if a.hashKeys && len(m.Key) > 0 {
		// Hashed here, where the encoder has just written the key: the
		// Kafka sink, reading it a read batch later for the partition,
		// found it out of the cache (4 % of the agent's CPU, most of it
		// waiting for memory).
		o.keyHash, o.hashed = keyHash(m.Key), true
	}
	a.out = append(a.out, o)
}

const arenaChunk = 1024 // messages per chunk

// msg returns a zeroed message.
func (a *outArena) msg() *Outgoing {
	if len(a.msgs) == cap(a.msgs) {
		a.msgs = make([]Outgoing, 0, arenaChunk)
	}
	a.msgs = a.msgs[:len(a.msgs)+1]
	return &a.msgs[len(a.msgs)-1]
}

// headers returns an empty slice with room for n headers; appending past n
// reallocates rather than overwriting a neighbour.
func (a *outArena) headers(n int) []Header {
	if cap(a.hdrs)-len(a.hdrs) < n {
		a.hdrs = make([]Header, 0, max(n, 6*arenaChunk))
	}
	start := len(a.hdrs)
	a.hdrs = a.hdrs[:start+n]
	return a.hdrs[start : start : start+n]
}

// id is MessageID(agent, seq, index), its bytes carved from a chunk that is
// never written again.
func (a *outArena) id(agent string, seq uint64, index int) string {
	need := len(agent) + 2*(1+20)
	if cap(a.ids)-len(a.ids) < need {
		a.ids = make([]byte, 0, max(need, 32*arenaChunk))
	}
	start := len(a.ids)
	a.ids = append(a.ids, agent...)
	a.ids = append(a.ids, ':')
	a.ids = strconv.AppendUint(a.ids, seq, 10)
	if index >= 0 {
		a.ids = append(a.ids, ':')
		a.ids = strconv.AppendInt(a.ids, int64(index), 10)
	}
	b := a.ids[start:len(a.ids):len(a.ids)]
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// backoff is exponential with full jitter in [d/2, d).
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) reset() { b.cur = 0 }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

func (b *backoff) sleep(ctx context.Context) bool { return sleepCtx(ctx, b.next()) }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// stateClock accumulates the time spent with each sink active.
type stateClock struct {
	mu    sync.Mutex
	cur   string
	since time.Time
	total map[string]time.Duration
}

func (s *stateClock) init(state string) {
	s.cur, s.since, s.total = state, time.Now(), map[string]time.Duration{}
}

func (s *stateClock) set(state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.total[s.cur] += now.Sub(s.since)
	s.cur, s.since = state, now
}

func (s *stateClock) seconds(state string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.total[state]
	if s.cur == state {
		d += time.Since(s.since)
	}
	return d.Seconds()
}
