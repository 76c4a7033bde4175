package rib

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
)

// Options configures a Stage.
type Options struct {
	Config Config
	// Dir is the state directory; the state lives in Dir/rib.db.
	Dir        string
	AgentID    string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
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
	log     *slog.Logger
	st      *store
	m       *metrics
	reg     prometheus.Registerer

	mu      sync.Mutex
	ops     []op                          // changes not yet committed, in seq order
	routes  map[string]map[string]ovEntry // peer → route key → newest change
	clears  map[string]uint64             // peer → gen of its newest clear
	gen     uint64
	applied uint64 // the file holds every change of records ≤ applied
}

type ovEntry struct {
	gen uint64
	val []byte // nil: withdrawn
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
	st, err := openStore(opts.Dir, false)
	if err != nil {
		return nil, err
	}
	applied, err := st.applied()
	if err == nil {
		var total uint64
		if total, err = st.total(); err == nil {
			s := &Stage{cfg: opts.Config, agentID: opts.AgentID, log: opts.Logger.With("component", "rib"), st: st, applied: applied, reg: opts.Registerer}
			s.reset()
			if s.m, err = newMetrics(opts.Registerer); err == nil {
				s.m.routes.Set(float64(total))
				return s, nil
			}
		}
	}
	_ = st.close()
	return nil, fmt.Errorf("rib: %w", err)
}

// Close releases the state file and the metrics.
func (s *Stage) Close() error {
	s.m.unregister(s.reg)
	return s.st.close()
}

func (s *Stage) reset() {
	s.ops = nil
	s.routes = map[string]map[string]ovEntry{}
	s.clears = map[string]uint64{}
}

// Rewind implements forwarder.Sequencer: changes of records before from
// were acknowledged and are committed; the rest are dropped.
func (s *Stage) Rewind(from uint64) error {
	if from > 0 {
		if err := s.CommitThrough(from - 1); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	return nil
}

// CommitThrough implements forwarder.Sequencer.
func (s *Stage) CommitThrough(seq uint64) error {
	s.mu.Lock()
	n := 0
	for n < len(s.ops) && s.ops[n].seq <= seq {
		n++
	}
	if n == 0 && seq <= s.applied {
		s.mu.Unlock()
		return nil
	}
	batch := slices.Clone(s.ops[:n])
	s.mu.Unlock()

	// Lookups meanwhile still find these changes in the overlay, which
	// agrees with the file once written.
	delta, err := s.st.apply(batch, seq)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range batch {
		switch o.kind {
		case opClear:
			if s.clears[o.peer] == o.gen {
				delete(s.clears, o.peer)
			}
		default:
			if m := s.routes[o.peer]; m != nil && m[o.rk].gen == o.gen {
				delete(m, o.rk)
				if len(m) == 0 {
					delete(s.routes, o.peer)
				}
			}
		}
	}
	s.ops = slices.Delete(s.ops, 0, n)
	s.applied = max(s.applied, seq)
	s.m.routes.Add(float64(delta))
	return nil
}

// lookup returns a route's value in the state as of the records sequenced
// so far: the overlay's newest change, else the file.
func (s *Stage) lookup(peer, rk string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cg, cleared := s.clears[peer]
	if e, ok := s.routes[peer][rk]; ok && e.gen > cg {
		return e.val, nil
	}
	if cleared {
		return nil, nil
	}
	// Under the lock: a commit removing this key from the overlay after
	// the file was read could otherwise hide a change.
	return s.st.get(peer, rk)
}

// change records a change made by record seq.
func (s *Stage) change(seq uint64, kind opKind, peer, rk string, val []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.ops = append(s.ops, op{seq: seq, gen: s.gen, kind: kind, peer: peer, rk: rk, val: val})
	if kind == opClear {
		s.clears[peer] = s.gen
		return
	}
	m := s.routes[peer]
	if m == nil {
		m = map[string]ovEntry{}
		s.routes[peer] = m
	}
	m[rk] = ovEntry{gen: s.gen, val: val}
}

// Sequence implements forwarder.Sequencer.
func (s *Stage) Sequence(rec record.Record, msgs []*forwarder.Outgoing, emit func(*forwarder.Outgoing) error) error {
	out := &output{emit: emit}
	for _, m := range msgs {
		out.next = max(out.next, m.Index+1)
	}
	s.mu.Lock()
	replay := rec.Seq <= s.applied
	s.mu.Unlock()
	for _, m := range msgs {
		if err := s.one(rec, m, replay, out); err != nil {
			return err
		}
	}
	return nil
}

// output emits a record's messages; messages the stage adds are numbered
// after the encoder's, in the order added.
type output struct {
	emit func(*forwarder.Outgoing) error
	next int
}

func (o *output) add(stream string, key, value []byte) error {
	m := &forwarder.Outgoing{Stream: stream, Key: key, Value: value, Index: o.next}
	o.next++
	return o.emit(m)
}

func (s *Stage) one(rec record.Record, m *forwarder.Outgoing, replay bool, out *output) error {
	emit, add := out.emit, out.add
	if m.Value == nil {
		return emit(m)
	}
	if replay {
		// The file already holds this record's changes (a crash between
		// committing them and the spool's persisting its ack): the sink
		// acknowledged everything the record made, bmp.rib messages and
		// synthetic withdraws included, so it passes through unchanged.
		return emit(m)
	}
	if ev, ok := parseRoute(m.Value); ok && !ev.eor {
		rk := ev.rkey()
		cur, err := s.lookup(ev.peer, rk)
		if err != nil {
			return err
		}
		if ev.withdraw {
			if cur != nil {
				s.change(rec.Seq, opDel, ev.peer, rk, nil)
			}
			if err := emit(m); err != nil {
				return err
			}
			return add(forwarder.StreamRIB, ribKey(ev.peer, rk), nil)
		}
		if h, _, _ := decodeValue(cur); cur != nil && h == ev.hash {
			s.m.duplicates.WithLabelValues(s.cfg.Duplicates).Inc()
			switch s.cfg.Duplicates {
			case DuplicatesDrop:
				return nil
			case DuplicatesMark:
				m.Value = markDuplicate(m.Value)
			}
			return emit(m)
		}
		s.change(rec.Seq, opSet, ev.peer, rk, encodeValue(ev.hash, ev.afi, ev.safi))
		if err := emit(m); err != nil {
			return err
		}
		return add(forwarder.StreamRIB, ribKey(ev.peer, rk), m.Value)
	}
	if ev, ok := parsePeerDown(m.Value); ok {
		if err := emit(m); err != nil {
			return err
		}
		return s.withdrawPeer(rec, &ev, out)
	}
	return emit(m)
}

// scanChunk bounds the routes read from the file at a time.
const scanChunk = 1024

// withdrawPeer emits a synthetic withdraw, and a bmp.rib tombstone, for
// every route the peer holds, in route key order (so a re-delivery numbers
// them alike), reading the file in chunks, and then clears the peer.
func (s *Stage) withdrawPeer(rec record.Record, ev *event, out *output) error {
	// The overlay's changes of this peer, taken now: a commit during the
	// walk moves some of them into the file, where the walk must not read
	// them as new.
	s.mu.Lock()
	_, cleared := s.clears[ev.peer]
	cg := s.clears[ev.peer]
	var ov []kv
	for rk, e := range s.routes[ev.peer] {
		if e.gen > cg {
			ov = append(ov, kv{rk: rk, val: e.val})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(ov, func(a, b kv) int {
		switch {
		case a.rk < b.rk:
			return -1
		case a.rk > b.rk:
			return 1
		}
		return 0
	})
	inOverlay := make(map[string]bool, len(ov))
	for _, o := range ov {
		inOverlay[o.rk] = true
	}
	withdraw := func(rk string, val []byte) error {
		_, afi, safi := decodeValue(val)
		s.m.synthetic.Inc()
		id := s.agentID + ":" + strconv.FormatUint(rec.Seq, 10) + ":" + strconv.Itoa(out.next)
		if err := out.add(tableStream(tableOf(rk)), routeStreamKey(ev.peer, rk), withdrawEvent(id, ev.envelope, rk, afi, safi)); err != nil {
			return err
		}
		return out.add(forwarder.StreamRIB, ribKey(ev.peer, rk), nil)
	}
	// Merge the file's routes (unless the overlay cleared the peer) with
	// the overlay's, in key order; the overlay wins.
	oi := 0
	flushOverlayBefore := func(limit string, all bool) error {
		for ; oi < len(ov) && (all || ov[oi].rk < limit); oi++ {
			if ov[oi].val != nil {
				if err := withdraw(ov[oi].rk, ov[oi].val); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if !cleared {
		after := ""
		for {
			chunk, err := s.st.scan(ev.peer, after, scanChunk)
			if err != nil {
				return err
			}
			for _, r := range chunk {
				if err := flushOverlayBefore(r.rk, false); err != nil {
					return err
				}
				if inOverlay[r.rk] {
					continue
				}
				if err := withdraw(r.rk, r.val); err != nil {
					return err
				}
			}
			if len(chunk) < scanChunk {
				break
			}
			after = chunk[len(chunk)-1].rk
		}
	}
	if err := flushOverlayBefore("", true); err != nil {
		return err
	}
	s.change(rec.Seq, opClear, ev.peer, "", nil)
	return nil
}

func tableOf(rk string) string {
	t, _, _ := cutTable(rk)
	return t
}
