package forwarder

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// expandingSequencer adds `expand` messages to every record whose payload
// starts with 'X' (as the route state does for a Peer Down), drops records
// starting with 'D', and logs the calls the forwarder makes.
type expandingSequencer struct {
	Encoder
	expand int

	mu        sync.Mutex
	committed uint64
	rewinds   []uint64
}

func (s *expandingSequencer) Rewind(from uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rewinds = append(s.rewinds, from)
	return nil
}

func (s *expandingSequencer) CommitThrough(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed = max(s.committed, seq)
	return nil
}

func (s *expandingSequencer) Sequence(rec record.Record, msgs []*Outgoing, emit func(*Outgoing) error) error {
	if rec.Payload[0] == 'D' {
		return nil
	}
	for _, m := range msgs {
		if err := emit(m); err != nil {
			return err
		}
	}
	if rec.Payload[0] != 'X' {
		return nil
	}
	for i := range s.expand {
		if err := emit(&Outgoing{Stream: "test.expand", Value: []byte{1}, Index: 1 + i}); err != nil {
			return err
		}
	}
	return nil
}

// orderedSource checks that the sequencer committed a seq before the spool
// is acknowledged through it, and that the expanded record is never
// acknowledged before all of its messages were delivered.
type orderedSource struct {
	*memSource
	seq       *expandingSequencer
	sink      *fakeSink
	expanded  uint64
	expand    int
	violation chan string
}

func (s *orderedSource) AckThrough(seq uint64) error {
	s.seq.mu.Lock()
	c := s.seq.committed
	s.seq.mu.Unlock()
	if c < seq {
		s.violation <- "spool acked before the sequencer committed"
	}
	if seq >= s.expanded {
		got := s.sink.ids()
		for i := range s.expand {
			if got[MessageID("a1", s.expanded, 1+i)] == 0 {
				s.violation <- "spool acked past a record whose expansion was not all delivered"
				break
			}
		}
	}
	return s.memSource.AckThrough(seq)
}

func TestForwarderSequencer(t *testing.T) {
	const expand = 3*seqPart + 17
	mem := newMemSource()
	sink := newFakeSink(SinkKafka)
	seq := &expandingSequencer{Encoder: Raw{}, expand: expand}
	src := &orderedSource{memSource: mem, seq: seq, sink: sink, expand: expand, violation: make(chan string, 100)}
	for i := range 40 {
		p := byte('r')
		switch i {
		case 9:
			p = 'D'
		case 19:
			p = 'X'
		}
		mem.Append(record.Record{Kind: record.KindBMP, Key: []byte("r1"), Payload: []byte{p, byte(i)}})
	}
	src.expanded = 20
	// A failure inside the expansion: the session ends, the record is read
	// and expanded again from the rewound sequencer.
	sink.failOnce[MessageID("a1", 20, 2*seqPart+5)] = true
	cfg := unitConfig()
	cfg.MaxInFlight = seqPart // a part at a time
	f, err := newForwarder(cfg, src, Parallel{Encoder: seq}, sink, nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	startForwarder(t, f)
	testenv.Eventually(t, 20*time.Second, "spool acked through 40", func() bool { return mem.Acked() == 40 })
	select {
	case v := <-src.violation:
		t.Fatal(v)
	default:
	}
	got := sink.ids()
	if got[MessageID("a1", 10, -1)] != 0 {
		t.Error("a record the sequencer dropped was delivered")
	}
	for i := range expand {
		if got[MessageID("a1", 20, 1+i)] == 0 {
			t.Fatalf("expanded message %d never delivered", 1+i)
		}
	}
	seq.mu.Lock()
	defer seq.mu.Unlock()
	if len(seq.rewinds) < 2 || seq.rewinds[0] != 1 || seq.rewinds[len(seq.rewinds)-1] > 20 {
		t.Fatalf("rewinds %v: want one per session, the second from at most the failed record 20", seq.rewinds)
	}
}

// keySequencer changes the key of record 2's message and adds a message of
// its own to every record.
type keySequencer struct{ Encoder }

func (keySequencer) Rewind(uint64) error        { return nil }
func (keySequencer) CommitThrough(uint64) error { return nil }

func (keySequencer) Sequence(rec record.Record, msgs []*Outgoing, emit func(*Outgoing) error) error {
	for _, m := range msgs {
		if rec.Seq == 2 {
			m.Key = []byte("changed")
		}
		if err := emit(m); err != nil {
			return err
		}
	}
	return emit(&Outgoing{Stream: "test.added", Key: []byte{'k', byte(rec.Seq)}, Value: []byte{1}, Index: 1})
}

// TestSequencerKeepsKeys: keys are hashed as messages are encoded, and
// the Sequencer's goroutine hashes only the messages it adds; a Sequencer
// that changes a key it was passed fails in race builds, where the tests
// run (the hash would pick another partition than the key's).
func TestSequencerKeepsKeys(t *testing.T) {
	mem := newMemSource()
	for i := range 2 {
		mem.Append(record.Record{Kind: record.KindBMP, Key: []byte("r1"), Payload: []byte{'r', byte(i)}})
	}
	f, err := newForwarder(unitConfig(), mem, Parallel{Encoder: keySequencer{Encoder: Raw{Kind: record.KindBMP, Stream: "test.raw"}}}, newFakeSink(SinkKafka), nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// As with a Kafka sink, which partitions by the key's hash.
	for i := range f.arenas {
		f.arenas[i].hashKeys = true
	}
	f.seqArena.hashKeys = true
	recs, err := mem.Read(t.Context(), 1, 10)
	if err != nil || len(recs) != 2 {
		t.Fatalf("read: %d records, %v", len(recs), err)
	}
	b := f.encodeBatch(recs[:1], 1<<20)
	var out []*Outgoing
	send := func(b *encodedBatch) bool { out = append(out, b.msgs...); return true }
	if err := f.sequenceBatch(t.Context(), b, send); err != nil {
		t.Fatalf("keys kept: %v", err)
	}
	if len(out) != 2 {
		t.Fatalf("%d messages, want the record's and the added one", len(out))
	}
	for _, m := range out {
		if !m.hashed || m.keyHash != keyHash(m.Key) {
			t.Errorf("%s message: hashed %v, hash %x, want %x", m.Stream, m.hashed, m.keyHash, keyHash(m.Key))
		}
	}
	err = f.sequenceBatch(t.Context(), f.encodeBatch(recs[1:], 1<<20), send)
	if raceEnabled && err == nil {
		t.Fatal("a changed key passed")
	}
	if !raceEnabled && err != nil {
		t.Fatalf("without the race detector keys are not checked: %v", err)
	}
}
