package forwarder

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// stateEncoder is a Parallel encoder with per-source state versioned by
// seq, like the BMP decoder's per-peer state: a record whose payload starts
// with 's' sets its source's state from its seq on (an Ordered record, a
// Peer Up); any other record emits two messages carrying the state in force
// before its seq, and its seq. It checks that an
// Ordered record never runs beside another Encode, and records how many
// Encode calls ever ran at once.
type stateEncoder struct {
	mu     sync.Mutex
	state  map[string][]version
	active atomic.Int32
	most   atomic.Int32
	bad    atomic.Value // string: the first violation
}

func (e *stateEncoder) Encode(rec record.Record, emit func(record.Output)) error {
	n := e.active.Add(1)
	defer e.active.Add(-1)
	for m := e.most.Load(); n > m && !e.most.CompareAndSwap(m, n); m = e.most.Load() {
	}
	if ordered(rec) {
		if n != 1 {
			e.bad.CompareAndSwap(nil, fmt.Sprintf("ordered record %d encoded beside %d others", rec.Seq, n-1))
		}
		e.mu.Lock()
		vs := e.state[rec.Source]
		if len(vs) == 0 || vs[len(vs)-1].seq < rec.Seq { // not a re-delivery
			e.state[rec.Source] = append(vs, version{rec.Seq, string(rec.Payload[1:])})
		}
		e.mu.Unlock()
		emit(record.Output{Stream: "test.peer", Key: rec.Key, Value: rec.Payload, Index: -1})
		return nil
	}
	// Give the other encoders a chance to run meanwhile.
	if rec.Seq%3 == 0 {
		time.Sleep(20 * time.Microsecond)
	}
	var st string
	e.mu.Lock()
	for _, v := range e.state[rec.Source] {
		if v.seq < rec.Seq {
			st = v.value
		}
	}
	e.mu.Unlock()
	v := st + ":" + strconv.FormatUint(rec.Seq, 10)
	emit(record.Output{Stream: "test.route", Key: rec.Key, Value: []byte(v + ":a"), Index: 0})
	emit(record.Output{Stream: "test.route", Key: rec.Key, Value: []byte(v + ":b"), Index: 1})
	return nil
}

type version struct {
	seq   uint64
	value string
}

func ordered(rec record.Record) bool { return len(rec.Payload) > 0 && rec.Payload[0] == 's' }

// orderSink records every message in the order Write received it, per sink
// session, acknowledges asynchronously, fails chosen ids once, and can hold
// its acks back to show what max_in_flight_bytes lets in.
type orderSink struct {
	*fakeSink
	mu       sync.Mutex
	sessions [][]*Outgoing
	hold     chan struct{} // nil: ack at once
	held     atomic.Int64  // key and value bytes written and not acked
	mostHeld atomic.Int64
}

func (s *orderSink) Connect(ctx context.Context) error {
	if err := s.fakeSink.Connect(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	s.sessions = append(s.sessions, nil)
	s.mu.Unlock()
	return nil
}

func (s *orderSink) Write(ctx context.Context, batch []*Outgoing, ack AckFunc) error {
	var n int64
	for _, m := range batch {
		n += int64(msgBytes(m))
	}
	h := s.held.Add(n)
	for m := s.mostHeld.Load(); h > m && !s.mostHeld.CompareAndSwap(m, h); m = s.mostHeld.Load() {
	}
	s.mu.Lock()
	i := len(s.sessions) - 1
	s.sessions[i] = append(s.sessions[i], batch...)
	hold := s.hold
	s.mu.Unlock()
	wrapped := func(m *Outgoing, err error) {
		s.held.Add(-int64(msgBytes(m)))
		ack(m, err)
	}
	if hold == nil {
		return s.fakeSink.Write(ctx, batch, wrapped)
	}
	go func() {
		<-hold
		_ = s.fakeSink.Write(ctx, batch, wrapped)
	}()
	return nil
}

func TestParallelEncodingKeepsOrder(t *testing.T) {
	const records = 3000
	for _, tt := range []struct {
		name     string
		workers  int
		sources  int
		every    int  // an ordered record every so many records
		parallel bool // runs between ordered records are long enough to share
	}{
		{"one encoder", 1, 3, 50, false},
		{"two encoders", 2, 3, 500, true},
		{"eight encoders one source", 8, 1, 200, true},
		{"eight encoders ordered often", 8, 5, 3, false},
		{"four encoders nothing ordered", 4, 4, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := newMemSource()
			enc := &stateEncoder{state: map[string][]version{}}
			sink := &orderSink{fakeSink: newFakeSink(SinkKafka)}
			// Failures make the forwarder reconnect and re-send from the
			// watermark: at least once, order kept within each session.
			sink.failOnce["a1:700:1"] = true
			sink.failOnce["a1:2100:0"] = true
			cfg := unitConfig()
			cfg.ReadBatch = 512
			cfg.MaxInFlight = 4000
			cfg.Encoders = tt.workers
			f, err := newForwarder(cfg, src, Parallel{Encoder: enc, Ordered: ordered}, sink, nil, nil, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			// want[seq] is the value the sequential encoder gives record seq.
			want := make([]string, records+1)
			state := map[string]string{}
			for i := range records {
				seq := uint64(i + 1)
				source := "r" + strconv.Itoa(i%tt.sources)
				rec := record.Record{Kind: record.KindBMP, Key: []byte(source), Source: source, Payload: []byte("route")}
				if tt.every > 0 && i%tt.every == 0 {
					rec.Payload = []byte("s" + strconv.Itoa(i))
					state[source] = strconv.Itoa(i)
					want[seq] = string(rec.Payload)
				} else {
					want[seq] = state[source] + ":" + strconv.FormatUint(seq, 10)
				}
				src.Append(rec)
			}
			startForwarder(t, f)
			testenv.Eventually(t, 30*time.Second, "spool acked through the last record", func() bool { return src.Acked() == records })

			if bad := enc.bad.Load(); bad != nil {
				t.Fatal(bad)
			}
			if tt.parallel && enc.most.Load() < 2 {
				t.Errorf("at most %d Encode calls ran at once with %d encoders", enc.most.Load(), tt.workers)
			}
			if !tt.parallel && enc.most.Load() != 1 {
				t.Errorf("%d Encode calls ran at once, want one at a time", enc.most.Load())
			}
			got := sink.ids()
			for seq := uint64(1); seq <= records; seq++ {
				ids := []string{MessageID("a1", seq, 0), MessageID("a1", seq, 1)}
				if ordered(record.Record{Payload: []byte(want[seq])}) {
					ids = []string{MessageID("a1", seq, -1)}
				}
				for _, id := range ids {
					if got[id] == 0 {
						t.Fatalf("%s never acknowledged", id)
					}
				}
			}
			sink.mu.Lock()
			defer sink.mu.Unlock()
			if len(sink.sessions) < 2 {
				t.Errorf("%d sink sessions, want a reconnect after the injected failures", len(sink.sessions))
			}
			for si, sess := range sink.sessions {
				var last *Outgoing
				for _, m := range sess {
					if last != nil && (m.Seq < last.Seq || m.Seq == last.Seq && m.Index <= last.Index) {
						t.Fatalf("session %d: %s written after %s", si, m.ID, last.ID)
					}
					last = m
					v := string(m.Value)
					if m.Stream == "test.route" {
						v = v[:len(v)-2]
					}
					if v != want[m.Seq] {
						t.Fatalf("session %d: %s carries %q, the sequential encoding gives %q", si, m.ID, m.Value, want[m.Seq])
					}
				}
			}
		})
	}
}

// TestMaxInFlightBytes: with acks held back, the forwarder stops handing
// messages to the sink at max_in_flight_bytes, and goes on once acks come.
func TestMaxInFlightBytes(t *testing.T) {
	const size, records = 1000, 400
	src := newMemSource()
	sink := &orderSink{fakeSink: newFakeSink(SinkKafka), hold: make(chan struct{})}
	cfg := unitConfig()
	cfg.ReadBatch = 16
	cfg.MaxInFlight = 1 << 20
	cfg.MaxInFlightBytes = 64 << 10
	f, err := newForwarder(cfg, src, rawBMP, sink, nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for range records {
		src.Append(bmpRecord("r1", size))
	}
	startForwarder(t, f)
	// Held: every batch that fits, i.e. more than max minus one batch.
	// (A message counts its 1000 bytes, key, headers and msgOverhead.)
	floor := int64(cfg.MaxInFlightBytes - cfg.ReadBatch*(size+msgOverhead+200))
	testenv.Eventually(t, 10*time.Second, "the sink holds max_in_flight_bytes", func() bool { return sink.held.Load() > floor })
	// Give the pipeline time to overshoot if it were going to: it holds a
	// read batch and an encoded batch ready, and must not write them.
	time.Sleep(100 * time.Millisecond)
	if most := sink.mostHeld.Load(); most > int64(cfg.MaxInFlightBytes) {
		t.Fatalf("sink held %d bytes, above max_in_flight_bytes %d", most, cfg.MaxInFlightBytes)
	}
	if src.Acked() != 0 {
		t.Fatalf("acked %d with every ack held", src.Acked())
	}
	close(sink.hold)
	testenv.Eventually(t, 10*time.Second, "spool acked through the last record", func() bool { return src.Acked() == records })
	if most := sink.mostHeld.Load(); most > int64(cfg.MaxInFlightBytes) {
		t.Fatalf("sink held %d bytes, above max_in_flight_bytes %d", most, cfg.MaxInFlightBytes)
	}
}

// A spool read error ends Run with it, also while encoders and the sink
// still hold earlier batches.
func TestReadErrorEndsRun(t *testing.T) {
	src := &failingSource{memSource: newMemSource(), failAt: 50}
	for range 100 {
		src.Append(bmpRecord("r1", 100))
	}
	cfg := unitConfig()
	f, err := newForwarder(cfg, src, rawBMP, newFakeSink(SinkKafka), nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = f.Run(ctx)
	if !errors.Is(err, errBrokenSpool) || !strings.Contains(err.Error(), "spool read") {
		t.Fatalf("Run = %v, want the spool read error", err)
	}
}

var errBrokenSpool = errors.New("broken spool")

type failingSource struct {
	*memSource
	failAt uint64
}

func (s *failingSource) Read(ctx context.Context, from uint64, max int) ([]record.Record, error) {
	if from >= s.failAt {
		return nil, errBrokenSpool
	}
	return s.memSource.Read(ctx, from, max)
}

// partsSink keeps what it is given without acknowledging it.
type partsSink struct {
	*fakeSink
	writes [][]*Outgoing
	ack    AckFunc
}

func (s *partsSink) Write(_ context.Context, batch []*Outgoing, ack AckFunc) error {
	s.writes, s.ack = append(s.writes, batch), ack
	return nil
}

// TestHandOverInParts: a batch reaches the sink handPart messages at a
// time, in order, each part once it fits in flight; a record whose
// messages span two parts holds the watermark until every one of them,
// in both parts, is acknowledged, and records without messages pass
// with those before them.
func TestHandOverInParts(t *testing.T) {
	sink := &partsSink{fakeSink: newFakeSink(SinkKafka)}
	cfg := unitConfig()
	cfg.MaxInFlight = 4 * handPart // parts of handPart
	f, err := newForwarder(cfg, newMemSource(), rawBMP, sink, nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	msg := func(seq uint64, i int) *Outgoing {
		return &Outgoing{Seq: seq, Index: i, Stream: "s", Value: []byte("v")}
	}
	tr := newTracker(nil)
	// Record 10, handed over before, holds most of the room.
	var earlier []*Outgoing
	for i := range cfg.MaxInFlight - handPart - 10 {
		earlier = append(earlier, msg(10, i))
	}
	tr.add(10, len(earlier))
	// Records 11 to 14: 300, none, 400 (across the first part's end) and 5.
	b := &encodedBatch{}
	for i, n := range []int{300, 0, 400, 5} {
		seq := uint64(11 + i)
		b.recs, b.counts = append(b.recs, record.Record{Seq: seq}), append(b.counts, n)
		for j := range n {
			b.msgs = append(b.msgs, msg(seq, j))
		}
	}
	done := make(chan bool)
	go func() { done <- f.handOver(context.Background(), sink, tr, b) }()
	// The second part waits for room: the first filled what was left.
	testenv.Eventually(t, 5*time.Second, "the second part waiting for room", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return tr.want.waiting
	})
	if len(sink.writes) != 1 || len(sink.writes[0]) != handPart || sink.writes[0][0] != b.msgs[0] {
		t.Fatalf("first hand-over: %d writes, want one of the batch's first %d messages", len(sink.writes), handPart)
	}
	// Taken before the acks: the second part's Write sets them again.
	first, ack := sink.writes[0], sink.ack
	for _, m := range first {
		ack(m, nil)
	}
	if !<-done {
		t.Fatal("handOver failed")
	}
	if len(sink.writes) != 2 || len(sink.writes[1]) != len(b.msgs)-handPart || sink.writes[1][0] != b.msgs[handPart] {
		t.Fatalf("second hand-over: %d writes, want the batch's other %d messages", len(sink.writes), len(b.msgs)-handPart)
	}
	if wm, _ := tr.watermark(); wm != 0 {
		t.Fatalf("watermark %d with record 10 unacknowledged, want 0", wm)
	}
	for _, m := range earlier {
		tr.ack(m, nil)
	}
	// Records 10 to 12 are through; record 13 waits for its second part.
	if wm, _ := tr.watermark(); wm != 12 {
		t.Fatalf("watermark %d after the first part's acks, want 12", wm)
	}
	rest := sink.writes[1]
	for _, m := range rest[:len(rest)-5] { // record 13's second part
		sink.ack(m, nil)
	}
	if wm, _ := tr.watermark(); wm != 13 {
		t.Fatalf("watermark %d once record 13 is acknowledged, want 13", wm)
	}
	for _, m := range rest[len(rest)-5:] {
		sink.ack(m, nil)
	}
	if wm, _ := tr.watermark(); wm != 14 {
		t.Fatalf("watermark %d at the end, want 14", wm)
	}
}
