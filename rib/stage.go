package rib

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
)

// Options configures a Stage.
type Options struct {
	Config Config
	// Dir is the state directory; the state lives in Dir/rib.db (and its
	// index in Dir/rib.index).
	Dir        string
	AgentID    string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Append spools a record (the agent's spool). The stage spools a
	// KindRIBTimer record when a stale peer's timeout expires; nil: stale
	// routes are withdrawn only at End-of-RIB.
	Append func(ctx context.Context, rec record.Record) error

	// initialMmap overrides the file's first mapping (tests: remaps).
	initialMmap int
	// pageSize overrides the page size of a new file (benchmarks).
	pageSize int
	// maxCommitOps fixes the changes of a commit part (tests: 0 sizes
	// parts by maxCommitNodes); maxOverlayOps overrides the constant;
	// beforeWrite runs in a commit before it writes (tests).
	maxCommitOps, maxOverlayOps int
	beforeWrite                 func()
	maxPartNodes                int64 // overrides the constant (tests)
}

// Stage keeps the route state in spool order. It implements
// forwarder.Sequencer: the decisions of records not yet acknowledged live in
// an in-memory overlay over the committed file; CommitThrough moves them to
// the file as acks advance, and Rewind drops them when a session ends, so
// the file always equals what the acknowledged prefix of the spool produced,
// and a re-read record is decided against exactly the state its first
// delivery saw.
type Stage struct {
	cfg     Config
	agentID string
	dir     string
	log     *slog.Logger
	st      *store
	m       *metrics
	reg     prometheus.Registerer
	append  func(ctx context.Context, rec record.Record) error

	// commitMu serialises commits (the forwarder's ack ticker and Rewind
	// at a session's start): each applies its changes onto the file the
	// previous one left, as the changes were decided.
	commitMu sync.Mutex
	mu       sync.Mutex
	// committing is set while CommitThrough runs; commitEnd (on mu) is
	// signalled when it ends. Sequence waits on it while the overlay is
	// over maxOverlayOps (see there).
	committing bool
	commitEnd  *sync.Cond
	waits      uint64 // times Sequence waited for a commit (tests)
	parts      uint64 // commit transactions (tests)
	rebuilt    bool   // Open rebuilt the index (tests)
	sweepParts uint64 // transactions that ended inside a sweep (tests)
	// sweepResume is where the last transaction cut the sweep of the
	// overlay's first change; nil: it cut none.
	sweepResume *sweepCut
	rollbacks   uint64 // commit parts rolled back as too large (tests)
	partNodes   int64  // maxPartNodes unless a test set it
	// partOps is the changes the next commit part takes (fixedParts: a
	// test set it); overlayOps is maxOverlayOps unless a test set it.
	partOps, overlayOps int
	fixedParts          bool
	beforeWrite         func()
	ops                 []op // changes not yet committed, in seq order
	// routes is each route's newest change by its index hash (which
	// covers the peer): no keys to hash again or for the collector to
	// scan; the changes (ops) have the keys.
	routes ovRoutes
	// ovCount counts the routes entries by ovSlot: most routes a record
	// names are not in the overlay, and a count of 0 says so without a
	// look-up in a map of tens of thousands (a cache miss).
	ovCount *[1 << 16]uint16
	sweeps  map[string][]ovSweep // peer → sweeps, oldest first
	metas   map[string]ovMeta    // peer → newest meta
	gen     uint64
	applied uint64              // the file holds every change of records ≤ applied
	stale   map[string]peerMeta // committed stale peers, for the timer
	// committed is every peer's meta as the file holds it (its epoch and
	// staleness change only by opMeta), so decisions read no file for it.
	committed map[string]peerMeta
	fired     map[string]uint32 // peer → the stale epoch a timer record was spooled for

	// ix finds committed routes (index.go); next is each peer's next
	// position as of the records sequenced (Stage.change), committedNext
	// as of the file.
	ix            *index
	next          map[string]uint64
	committedNext map[string]uint64
	broken        error // the index could not follow a commit: the stage is unusable

	parse    parser // used by Sequence only
	dupCount prometheus.Counter
	mem      outMem // used by Sequence only
	// pre is what Prefetch made of the messages Sequence gets next, in
	// their order, from preAt on; touched is the index's touch sum. Used
	// by Sequence's goroutine only.
	pre     []prepared
	preAt   int
	touched uint64

	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

type ovEntry struct {
	gen uint64
	pos uint64
	val routeValue
	del bool // withdrawn
}

type ovSweep struct {
	gen uint64
	sw  sweep
}

type ovMeta struct {
	gen  uint64
	meta peerMeta
}

var _ forwarder.Sequencer = (*Stage)(nil)

// ErrDisabled is returned by Open for a configuration with the state off.
var ErrDisabled = errors.New("route state disabled (bmp.rib.enabled is false)")

// Open opens (creating) the route state in opts.Dir.
func Open(opts Options) (*Stage, error) {
	if !opts.Config.Enabled {
		return nil, ErrDisabled
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	st, err := openStore(opts.Dir, false, opts.initialMmap, opts.pageSize)
	if err != nil {
		return nil, err
	}
	s := &Stage{cfg: opts.Config, agentID: opts.AgentID, dir: opts.Dir, log: opts.Logger.With("component", "rib"), st: st,
		reg: opts.Registerer, append: opts.Append, stale: map[string]peerMeta{}, committed: map[string]peerMeta{}, fired: map[string]uint32{}, stop: make(chan struct{}),
		parse: newParser()}
	s.commitEnd = sync.NewCond(&s.mu)
	s.partOps, s.overlayOps, s.beforeWrite = maxCommitNodes, maxOverlayOps, opts.beforeWrite
	if opts.maxCommitOps > 0 {
		s.partOps, s.fixedParts = opts.maxCommitOps, true
	}
	if opts.maxOverlayOps > 0 {
		s.overlayOps = opts.maxOverlayOps
	}
	s.partNodes = maxPartNodes
	if opts.maxPartNodes > 0 {
		s.partNodes = opts.maxPartNodes
	}
	s.reset()
	if err := s.load(); err != nil {
		if s.ix != nil {
			s.ix.close()
		}
		_ = st.close()
		return nil, fmt.Errorf("rib: %w", err)
	}
	if s.append != nil {
		s.done.Add(1)
		go s.timer()
	}
	return s, nil
}

func (s *Stage) load() error {
	applied, err := s.st.applied()
	if err != nil {
		return err
	}
	routes, stale, err := s.st.totals()
	if err != nil {
		return err
	}
	metas, err := s.st.metas()
	if err != nil {
		return err
	}
	for p, m := range metas {
		s.committed[p] = m
		if m.stale {
			s.stale[p] = m
		}
	}
	if err := s.openIndex(routes); err != nil {
		return err
	}
	if s.m, err = newMetrics(s.reg); err != nil {
		return err
	}
	s.applied = applied
	s.dupCount = s.m.duplicates.WithLabelValues(s.cfg.Duplicates)
	s.m.routes.Set(float64(routes))
	s.m.stale.Set(float64(stale))
	return nil
}

// openIndex reuses the index a clean close left, else rebuilds it from the
// file.
func (s *Stage) openIndex(routes uint64) error {
	start := time.Now()
	tx, err := s.st.lastTx()
	if err != nil {
		return err
	}
	ix, err := reuseIndex(s.dir, tx, routes)
	if err == nil {
		if s.committedNext, err = s.st.nextPositions(); err == nil {
			s.ix = ix
			s.log.Info("route state index kept from the last clean stop", "routes", routes, "seconds", time.Since(start).Seconds())
			return nil
		}
		ix.close()
	}
	if !errors.Is(err, errNoMark) {
		s.log.Warn("route state index not kept, rebuilding it", "err", err)
	}
	if s.ix, err = newIndex(s.dir, routes); err != nil {
		return err
	}
	if s.committedNext, err = s.st.rebuild(s.ix); err != nil {
		return err
	}
	s.rebuilt = true
	s.log.Info("route state index rebuilt", "routes", routes, "seconds", time.Since(start).Seconds())
	return nil
}

// Close stops the timer and releases the state file and the metrics; later
// calls do nothing. The index is kept for the next open when every commit
// it followed succeeded.
func (s *Stage) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.done.Wait()
		s.m.unregister(s.reg)
		s.commitMu.Lock()
		defer s.commitMu.Unlock()
		s.mu.Lock()
		broken := s.broken
		s.mu.Unlock()
		tx, err := s.st.lastTx()
		if err != nil || broken != nil {
			s.ix.close()
		} else if err := s.ix.closeClean(tx); err != nil && !errors.Is(err, errHeapIndex) {
			s.log.Warn("route state index not kept; the next start rebuilds it", "err", err)
		}
		s.closeErr = s.st.close()
	})
	return s.closeErr
}

func (s *Stage) reset() {
	s.ops = nil
	s.sweepResume = nil
	s.next = map[string]uint64{}
	s.routes = ovRoutes{}
	s.ovCount = new([1 << 16]uint16)
	s.sweeps = map[string][]ovSweep{}
	s.metas = map[string]ovMeta{}
	clear(s.pre)
	s.pre, s.preAt = s.pre[:0], 0
}

// Rewind implements forwarder.Sequencer: changes of records before from
// were acknowledged and are committed; the rest are dropped.
func (s *Stage) Rewind(from uint64) error {
	if from > 0 {
		if err := s.CommitThrough(from - 1); err != nil {
			return err
		}
	}
	// Not while a commit holds a part of ops.
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	return nil
}

// maxCommitNodes bounds the pages one commit transaction changes. bbolt
// keeps what a transaction changes in memory until it writes it: a node
// per touched page (an entry per key of that page), then a 4 KB buffer per
// page written, about 10 KB a page. Routers send their tables in no useful
// key order, so in a large state nearly every change touches a page of its
// own (a 14-router run's commits of 8,192 changes held 28 MB of nodes and
// 18 MB of page buffers), while in a small one a commit's changes share
// pages, which is what makes large commits cheap per change (a page written
// once for many routes). Commits run from the forwarder's ack ticker while
// the sink goes on acknowledging, so a commit that fell behind takes more
// changes each time. So a CommitThrough with many changes writes them in
// parts, each one transaction ending at a record boundary: every part
// leaves the file holding all the changes of the records up to its applied
// seq, which is all the invariant asks. A part takes as many changes as
// the previous part's pages per change predict fit in maxCommitNodes
// (bbolt counts the nodes a transaction materialises), within
// [minCommitOps, maxOverlayOps].
//
// The prediction can be wrong (a part's changes may share fewer pages than
// the previous part's): a part that materialises more than maxPartNodes is
// rolled back before it writes and committed as two halves, so that no
// transaction holds more than about maxPartNodes pages (some 30 MB).
const (
	maxCommitNodes = 2048
	maxPartNodes   = 3072
	minCommitOps   = 256
)

// maxOverlayOps is the overlay size over which Sequence waits for the
// running commit to end before it decides a record: about 300 bytes a
// change, so about 10 MB. Without it the overlay grows as long as commits
// are slower than the sink: the forwarder's in-flight limits count what the
// sink has not acknowledged, not what the state has not committed.
const maxOverlayOps = 32768

// CommitThrough implements forwarder.Sequencer.
func (s *Stage) CommitThrough(seq uint64) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	s.committing = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.committing = false
		s.commitEnd.Broadcast()
		s.mu.Unlock()
	}()
	for {
		done, err := s.commitPart(seq)
		if done || err != nil {
			return err
		}
	}
}

// commitPart commits the overlay's changes of records ≤ seq, about partOps
// of them at most; done reports that it reached seq.
func (s *Stage) commitPart(seq uint64) (done bool, err error) {
	s.mu.Lock()
	n := 0
	for n < len(s.ops) && s.ops[n].seq <= seq {
		n++
	}
	if n == 0 && seq <= s.applied {
		s.mu.Unlock()
		return true, nil
	}
	through := seq
	if n > s.partOps {
		// Cut after the record of the partOps-th change: a record's
		// changes go into one transaction.
		cut := s.partOps
		for cut < n && s.ops[cut].seq == s.ops[cut-1].seq {
			cut++
		}
		if cut < n {
			n, through = cut, s.ops[cut-1].seq
		}
	}
	// Not a copy: Sequence only appends to ops (past n), and only this
	// commit, serialised by commitMu, removes them, after the write.
	batch := s.ops[:n:n]
	s.mu.Unlock()

	// Lookups meanwhile still find these changes in the overlay, which
	// agrees with the file once written.
	maxNodes := int64(0)
	if !s.fixedParts && len(batch) > 1 && batch[0].seq != batch[len(batch)-1].seq {
		// More than one record: the part can be cut smaller.
		maxNodes = s.partNodes
	}
	start := time.Now()
	res, err := s.st.apply(batch, through, maxNodes, s.partNodes, s.sweepResume, s.ix.hash, func() {
		if s.beforeWrite != nil {
			s.beforeWrite()
		}
	})
	if err == nil {
		// Before the changes leave the overlay: a look-up finds each
		// route in one or the other.
		if ierr := s.ix.apply(res.ix); ierr != nil {
			s.mu.Lock()
			s.broken = fmt.Errorf("rib: index: %w", ierr)
			s.mu.Unlock()
			s.log.Error("route state index failed; the route state stops deciding until the agent restarts", "err", ierr)
		} else if gerr := s.ix.growthFailure(); gerr != nil {
			s.log.Warn("route state index cannot grow; it is tried again at each commit, and the route state stops deciding if the index fills to 70 % first", "err", gerr)
		}
		s.m.commits.Observe(time.Since(start).Seconds())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if errors.Is(err, errPartTooLarge) {
		// The previous part's pages per change predicted too few pages:
		// half as many changes (rolled back, nothing written).
		s.partOps = max(n/2, 1)
		s.rollbacks++
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.sweepResume = res.cut
	if res.cut != nil {
		// The ops before the cut sweep are in the file; the sweep stays
		// in the overlay until its last part.
		n, through = res.cut.op, batch[res.cut.op].seq-1
		batch = batch[:n]
	}
	for i := range batch {
		if i%touchRun == 0 {
			s.routes.touchOps(batch[i:min(i+touchRun, len(batch))])
		}
		o := &batch[i]
		switch o.kind {
		case opSweep:
			s.sweeps[o.peer] = slices.DeleteFunc(s.sweeps[o.peer], func(w ovSweep) bool { return w.gen == o.gen })
			if len(s.sweeps[o.peer]) == 0 {
				delete(s.sweeps, o.peer)
			}
		case opMeta:
			if s.metas[o.peer].gen == o.gen {
				delete(s.metas, o.peer)
			}
			s.committed[o.peer] = *o.meta
			if o.meta.stale {
				s.stale[o.peer] = *o.meta
			} else {
				delete(s.stale, o.peer)
			}
		default:
			s.committedNext[o.peer] = max(s.committedNext[o.peer], o.pos+1)
			if s.routes.removeGen(o.h, o.gen) {
				s.ovCount[ovSlot(o.h)]--
			}
		}
	}
	s.ops = slices.Delete(s.ops, 0, n) // keeps the capacity appends reuse
	s.applied = max(s.applied, through)
	s.parts++
	if res.cut != nil {
		s.sweepParts++
	} else if !s.fixedParts && res.nodes > 0 {
		s.partOps = int(min(max(int64(n)*maxCommitNodes/res.nodes, minCommitOps), int64(s.overlayOps)))
	}
	s.m.routes.Add(float64(res.routes))
	s.m.stale.Add(float64(res.stale))
	s.commitEnd.Broadcast()
	return res.cut == nil && through == seq, nil
}

// lookupLocked returns a route's value and position (h: its index hash) in the state as of the
// records sequenced so far: the overlay's newest change, else the file (its
// index), less what sweeps after it removed; held is false when the state
// does not hold the route. Called with mu held.
func (s *Stage) lookupLocked(peer, rk string, h ixHash) (v routeValue, pos uint64, held bool, err error) {
	if s.broken != nil {
		return v, 0, false, s.broken
	}
	var g uint64
	var o *op
	ok := false
	if s.ovCount[ovSlot(h)] != 0 {
		o, ok = s.routes.get(h, s.ops)
	}
	if ok {
		v, pos, held, g = o.val, o.pos, o.kind != opDel, o.gen
	} else {
		// Under mu: a commit removes its changes from the overlay (under
		// mu) only after the index has them.
		pos, v, held = s.ix.get(h)
	}
	for _, w := range s.sweeps[peer] {
		if w.gen > g && held && w.sw.matches(rk, v) {
			held = false
		}
	}
	return v, pos, held, nil
}

// meta returns a peer's meta as of the records sequenced so far.
func (s *Stage) meta(peer string) (peerMeta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metaLocked(peer), nil
}

func (s *Stage) metaLocked(peer string) peerMeta {
	if m, ok := s.metas[peer]; ok {
		return m.meta
	}
	return s.committed[peer]
}

// change records a change made by record seq.
func (s *Stage) change(o op) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changeLocked(o)
}

func (s *Stage) changeLocked(o op) {
	s.gen++
	o.gen = s.gen
	if o.kind == opSet && !o.held {
		// A new route: after every position the peer held.
		n, ok := s.next[o.peer]
		if !ok {
			n = s.committedNext[o.peer]
		}
		o.pos, s.next[o.peer] = n, n+1
	}
	s.ops = append(s.ops, o)
	switch o.kind {
	case opSweep:
		s.sweeps[o.peer] = append(s.sweeps[o.peer], ovSweep{gen: o.gen, sw: o.sweep()})
	case opMeta:
		s.metas[o.peer] = ovMeta{gen: o.gen, meta: *o.meta}
	default:
		if s.routes.put(o.h, o.gen, s.ops) {
			s.ovCount[ovSlot(o.h)]++
		}
	}
}

// ovSlot is a route's counter in Stage.ovCount.
func ovSlot(h ixHash) uint16 { return uint16(h[0] >> 48) }

// output emits a record's messages; messages the stage adds are numbered
// after the encoder's, in the order added.
type output struct {
	emit func(*forwarder.Outgoing) error
	next int
	mem  *outMem
}

// add emits a message the stage adds, of its own bytes.
func (o *output) add(stream string, key, value []byte) error {
	return o.emit(o.message(stream, key, value))
}

// message is a message the stage adds, not yet emitted.
func (o *output) message(stream string, key, value []byte) *forwarder.Outgoing {
	m := o.mem.outgoing()
	*m = forwarder.Outgoing{Stream: stream, Key: key, Value: value, Index: o.next}
	o.next++
	return m
}

// ribKey is a bmp.rib key in the stage's key memory.
func (o *output) ribKey(peer, rk string) []byte {
	return o.mem.key(appendRIBKey(o.mem.scratch[:0], peer, rk))
}

// eventRIBKey is the bmp.rib key of a parsed route event.
func (o *output) eventRIBKey(ev *event) []byte {
	b := append(o.mem.scratch[:0], ev.streamKey...)
	return o.mem.key(appendRIBKeyTail(b, ev.table, ev.family, ev.pathID))
}

// outMem is where the messages the stage adds live: slabs of messages and
// of key bytes, a fresh one when one is used up (never reused: a message
// lives until its sink acknowledges it, and a slab until all of its have),
// instead of two allocations per route event. Used by Sequence only.
type outMem struct {
	msgs    []forwarder.Outgoing
	keys    []byte
	scratch []byte
}

func (m *outMem) outgoing() *forwarder.Outgoing {
	if len(m.msgs) == 0 {
		m.msgs = make([]forwarder.Outgoing, 128) // under 32 KB: a small allocation
	}
	o := &m.msgs[0]
	m.msgs = m.msgs[1:]
	return o
}

func (m *outMem) key(b []byte) []byte {
	m.scratch = b
	if cap(m.keys)-len(m.keys) < len(b) {
		m.keys = make([]byte, 0, max(16<<10, len(b)))
	}
	n := len(m.keys)
	m.keys = append(m.keys, b...)
	return m.keys[n:len(m.keys):len(m.keys)]
}

// prepared is a message as Prefetch read it: ready when it is a route
// event (not an End-of-RIB) with its parse and index hash.
type prepared struct {
	m     *forwarder.Outgoing
	ev    event
	h     ixHash
	ready bool
}

var _ forwarder.Prefetcher = (*Stage)(nil)

// Prefetch implements forwarder.Prefetcher: it reads the route events
// among msgs, as Sequence would, and touches their slots in the index, a
// run at once; Sequence then takes each from pre instead of reading it
// again, and finds its slot cached.
func (s *Stage) Prefetch(msgs []*forwarder.Outgoing) {
	if s.preAt == len(s.pre) {
		clear(s.pre) // nothing kept alive from here
		s.pre, s.preAt = s.pre[:0], 0
	}
	start := len(s.pre)
	for _, m := range msgs {
		p := prepared{m: m}
		if m.Value != nil {
			if ev, ok := s.parse.route(m.Value, m.Key); ok && !ev.eor && sameBytes(ev.streamKey, m.Key) {
				// Only with the stream key in the message's own bytes:
				// the parser's buffer for it is reused by the next parse.
				p.ev, p.h, p.ready = ev, s.ix.hash(ev.peer, ev.rk), true
			}
		}
		s.pre = append(s.pre, p)
	}
	s.touched += s.ix.touchPrepared(s.pre[start:])
	s.mu.Lock()
	s.routes.touchPrepared(s.pre[start:], s.ovCount)
	s.mu.Unlock()
}

// prepared returns what Prefetch made of m, the message Sequence has come
// to, if it is ready; every message Sequence gets passes here, so that pre
// stays in step with them. A message out of step (Prefetch not called for
// it) empties pre: m and what follows are then read as they come.
func (s *Stage) prepared(m *forwarder.Outgoing) *prepared {
	if s.preAt == len(s.pre) {
		return nil
	}
	p := &s.pre[s.preAt]
	if p.m != m {
		clear(s.pre)
		s.pre, s.preAt = s.pre[:0], 0
		return nil
	}
	s.preAt++
	if !p.ready {
		return nil
	}
	return p
}

// sameBytes reports whether a and b are the same memory.
func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Sequence implements forwarder.Sequencer.
func (s *Stage) Sequence(rec record.Record, msgs []*forwarder.Outgoing, emit func(*forwarder.Outgoing) error) error {
	// Index 0 is the raw message's (docs/schema.md, Ids), also for a
	// record with no messages of its own (a stale timer's).
	out := &output{emit: emit, mem: &s.mem, next: 1}
	for _, m := range msgs {
		out.next = max(out.next, m.Index+1)
	}
	s.mu.Lock()
	// Backpressure: while the overlay is large and a commit runs, wait for
	// it (or a part of it) to end. Only for a running commit, which needs
	// nothing from this goroutine: the records it commits were sent
	// already. Waiting for acks instead could wait for records of the
	// batch being sequenced, which the forwarder sends only after it.
	if len(s.ops) > s.overlayOps && s.committing {
		start := time.Now()
		for len(s.ops) > s.overlayOps && s.committing {
			s.waits++
			s.m.waits.Inc()
			s.commitEnd.Wait()
		}
		s.m.waitTime.Add(time.Since(start).Seconds())
	}
	replay := rec.Seq <= s.applied
	s.mu.Unlock()
	if replay {
		// The file already holds this record's changes (a crash between
		// committing them and the spool's persisting its ack): the sink
		// acknowledged everything the record made, bmp.rib messages and
		// synthetic withdraws included, so it passes through unchanged.
		for _, m := range msgs {
			s.prepared(m)
			if err := emit(m); err != nil {
				return err
			}
		}
		return nil
	}
	if rec.Kind == record.KindRIBTimer {
		return s.timeout(rec, out)
	}
	for _, m := range msgs {
		if err := s.one(rec, m, out); err != nil {
			return err
		}
	}
	return nil
}

func (s *Stage) one(rec record.Record, m *forwarder.Outgoing, out *output) error {
	p := s.prepared(m)
	if m.Value == nil {
		return out.emit(m)
	}
	if p != nil {
		return s.route(rec, m, &p.ev, p.h, out)
	}
	// Nothing of m is read once it is emitted: it may be acknowledged and
	// its bytes reused at once.
	if ev, ok := s.parse.route(m.Value, m.Key); ok {
		if !ev.eor {
			return s.route(rec, m, &ev, s.ix.hash(ev.peer, ev.rk), out)
		}
		meta, err := s.meta(ev.peer)
		if err != nil {
			return err
		}
		var env []byte
		if meta.stale {
			env = envelopeOf(m.Value)
		}
		if err := out.emit(m); err != nil {
			return err
		}
		return s.endOfRIB(rec, meta, &ev, env, out)
	}
	if ev, ok := parsePeerDown(m.Value); ok {
		if err := out.emit(m); err != nil {
			return err
		}
		meta, err := s.meta(ev.peer)
		if err != nil {
			return err
		}
		if rec.Kind == record.KindBMPSyntheticPeerDown {
			// The session ended (or bgpedge died) without a Peer Down: the
			// peer's routes become stale, as BGP graceful restart keeps a
			// restarting speaker's routes.
			meta.epoch++
			meta.stale, meta.since, meta.peerJSON = true, rec.Time, ev.peerJSON
			s.change(op{seq: rec.Seq, kind: opMeta, peer: ev.peer, meta: &meta})
			return nil
		}
		if err := s.walk(rec, ev.peer, ev.envelope, sweep{}, out); err != nil {
			return err
		}
		s.change(op{seq: rec.Seq, kind: opSweep, peer: ev.peer})
		if meta.stale {
			meta.stale = false
			s.change(op{seq: rec.Seq, kind: opMeta, peer: ev.peer, meta: &meta})
		}
		return nil
	}
	return out.emit(m)
}

// route emits a route event m and its bmp.rib message and changes the
// state, or handles it as a duplicate: an announcement identical to the
// state. A duplicate of a stale route confirms it.
func (s *Stage) route(rec record.Record, m *forwarder.Outgoing, ev *event, h ixHash, out *output) error {
	rk := ev.rk
	// One critical section for the decision: the commit goroutine takes
	// the same lock for every part it commits.
	s.mu.Lock()
	cur, pos, held, err := s.lookupLocked(ev.peer, rk, h)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if ev.withdraw {
		if held {
			s.changeLocked(op{seq: rec.Seq, kind: opDel, peer: ev.peer, rk: rk, h: h, pos: pos, held: true, heldEpoch: cur.epoch})
		}
		s.mu.Unlock()
		tomb := out.message(StreamRIB, out.eventRIBKey(ev), nil)
		if err := out.emit(m); err != nil {
			return err
		}
		return out.emit(tomb)
	}
	epoch := s.metaLocked(ev.peer).epoch
	if held && cur.hash == ev.hash {
		if cur.epoch < epoch {
			rv := cur
			rv.epoch = epoch
			s.changeLocked(op{seq: rec.Seq, kind: opSet, peer: ev.peer, rk: rk, h: h, val: rv, pos: pos, held: true, heldEpoch: cur.epoch})
		}
		s.mu.Unlock()
		s.dupCount.Inc()
		switch s.cfg.Duplicates {
		case DuplicatesDrop:
			m.Discard()
			return nil
		case DuplicatesMark:
			m.Value = markDuplicate(m.Value)
		}
		return out.emit(m)
	}
	rv := routeValue{hash: ev.hash, afi: ev.afi, safi: ev.safi, epoch: epoch}
	s.changeLocked(op{seq: rec.Seq, kind: opSet, peer: ev.peer, rk: rk, h: h, val: rv, pos: pos, held: held, heldEpoch: cur.epoch})
	s.mu.Unlock()
	// The bmp.rib message holds m's bytes before m is emitted: once
	// emitted, m may be acknowledged and its bytes reused.
	rm := out.message(StreamRIB, out.eventRIBKey(ev), m.Value)
	rm.Share(m)
	if err := out.emit(m); err != nil {
		return err
	}
	return out.emit(rm)
}

// endOfRIB withdraws what is still stale of the marker's peer, table and
// family: a restarted router has re-sent that part of its table. meta is
// the peer's, env the marker's envelope (envelopeOf) if the peer is stale.
func (s *Stage) endOfRIB(rec record.Record, meta peerMeta, ev *event, env []byte, out *output) error {
	if !meta.stale {
		return nil
	}
	w := sweep{before: meta.epoch, table: ev.table, family: ev.family}
	if err := s.walk(rec, ev.peer, env, w, out); err != nil {
		return err
	}
	s.change(op{seq: rec.Seq, kind: opSweep, peer: ev.peer, sw: &w})
	return nil
}

// timerPayload is a KindRIBTimer record's payload: peer key, 0, epoch.
func timerPayload(peer string, epoch uint32) []byte {
	return binary.BigEndian.AppendUint32(append([]byte(peer), 0), epoch)
}

// timeout withdraws a stale peer's remaining stale routes, if the record
// is for the peer's current stale epoch.
func (s *Stage) timeout(rec record.Record, out *output) error {
	i := len(rec.Payload) - 5
	if i < 0 || rec.Payload[i] != 0 {
		s.log.Warn("route state timer record with a bad payload, ignored", "seq", rec.Seq)
		return nil
	}
	peer, epoch := string(rec.Payload[:i]), binary.BigEndian.Uint32(rec.Payload[i+1:])
	meta, err := s.meta(peer)
	if err != nil || !meta.stale || meta.epoch != epoch {
		return err
	}
	router, _, _, _ := splitPeer(peer)
	env := fmt.Appendf(nil, `,"agent":%q,"source":"bmp","router":%q,"seq":%d,"received_at":%q,"peer":`,
		s.agentID, router, rec.Seq, rec.Time.UTC().Format(time.RFC3339Nano))
	env = append(env, meta.peerJSON...)
	w := sweep{before: epoch}
	if err := s.walk(rec, peer, env, w, out); err != nil {
		return err
	}
	s.change(op{seq: rec.Seq, kind: opSweep, peer: peer, sw: &w})
	meta.stale = false
	s.change(op{seq: rec.Seq, kind: opMeta, peer: peer, meta: &meta})
	return nil
}

// scanChunk bounds the routes read from the file at a time.
const scanChunk = 1024

// walk emits a synthetic withdraw, and a bmp.rib tombstone, for every route
// of peer that filter matches, in position order (the order the peer first
// announced them: the same order whichever of them the overlay holds, so a
// re-delivery numbers them alike), reading the file in chunks. envelope is
// the events' JSON from ,"agent": through the peer object.
func (s *Stage) walk(rec record.Record, peer string, envelope []byte, filter sweep, out *output) error {
	// The overlay's changes of this peer, taken now: a commit during the
	// walk moves some of them into the file, where the walk must not read
	// them again.
	s.mu.Lock()
	// The peer's routes the overlay changed, each at its newest change,
	// and every position the overlay changed: a route withdrawn and
	// announced again has a new one, and its old one must not be read from
	// the file.
	var ov []ovRoute
	inOverlay := map[uint64]bool{}
	for i := range s.ops {
		if o := &s.ops[i]; o.peer == peer && (o.kind == opSet || o.kind == opDel) {
			inOverlay[o.pos] = true
			if s.routes.gen(o.h, s.ops) == o.gen {
				ov = append(ov, ovRoute{rk: o.rk, ovEntry: ovEntry{gen: o.gen, pos: o.pos, val: o.val, del: o.kind == opDel}})
			}
		}
	}
	sweeps := slices.Clone(s.sweeps[peer])
	s.mu.Unlock()
	slices.SortFunc(ov, func(a, b ovRoute) int { return cmp.Compare(a.pos, b.pos) })
	fileCleared := false
	for _, w := range sweeps {
		fileCleared = fileCleared || w.sw == (sweep{})
	}
	visit := func(rk string, v routeValue, gen uint64) error {
		for _, w := range sweeps {
			if w.gen > gen && w.sw.matches(rk, v) {
				return nil
			}
		}
		if !filter.matches(rk, v) {
			return nil
		}
		s.m.synthetic.Inc()
		id := s.agentID + ":" + strconv.FormatUint(rec.Seq, 10) + ":" + strconv.Itoa(out.next)
		if err := out.add(tableStream(tableOf(rk)), routeStreamKey(peer, rk), withdrawEvent(id, envelope, rk, v.afi, v.safi)); err != nil {
			return err
		}
		return out.add(StreamRIB, out.ribKey(peer, rk), nil)
	}
	oi := 0
	overlayBefore := func(limit uint64, all bool) error {
		for ; oi < len(ov) && (all || ov[oi].pos < limit); oi++ {
			if ov[oi].del {
				continue
			}
			if err := visit(ov[oi].rk, ov[oi].val, ov[oi].gen); err != nil {
				return err
			}
		}
		return nil
	}
	for from := uint64(0); !fileCleared; {
		chunk, err := s.st.scan(peer, from, scanChunk)
		if err != nil {
			return err
		}
		for _, r := range chunk {
			if err := overlayBefore(r.pos, false); err != nil {
				return err
			}
			if inOverlay[r.pos] {
				continue
			}
			if err := visit(r.rk, r.val, 0); err != nil {
				return err
			}
		}
		if len(chunk) < scanChunk {
			break
		}
		from = chunk[len(chunk)-1].pos + 1
	}
	return overlayBefore(0, true)
}

type ovRoute struct {
	rk string
	ovEntry
}

func tableOf(rk string) string {
	t, _, _ := strings.Cut(rk, "|")
	return t
}

// timer spools a KindRIBTimer record for every stale peer whose timeout
// expired, once per stale epoch and process.
func (s *Stage) timer() {
	defer s.done.Done()
	every := min(time.Second, s.cfg.StaleTimeout/10)
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		var due []string
		var epochs []uint32
		for p, m := range s.stale {
			if time.Since(m.since) >= s.cfg.StaleTimeout && s.fired[p] != m.epoch {
				due, epochs = append(due, p), append(epochs, m.epoch)
			}
		}
		s.mu.Unlock()
		for i, p := range due {
			router, _, _, _ := splitPeer(p)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := s.append(ctx, record.Record{Kind: record.KindRIBTimer, Key: []byte(router), Time: time.Now().UTC(), Source: "rib", Payload: timerPayload(p, epochs[i])})
			cancel()
			if err != nil {
				s.log.Warn("stale timeout: spooling the timer record failed, retrying", "peer", p, "err", err)
				continue
			}
			s.mu.Lock()
			s.fired[p] = epochs[i]
			s.mu.Unlock()
		}
	}
}
