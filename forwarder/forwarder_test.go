package forwarder

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// fakeSink acknowledges asynchronously, like the real sinks, and can be made
// to fail selected messages or refuse connections.
type fakeSink struct {
	name string

	mu        sync.Mutex
	connected bool
	refuse    bool
	failOnce  map[string]bool // ids to fail the first time they are written
	got       map[string]int  // id → times acknowledged successfully
	pending   sync.WaitGroup
	connects  int
}

var _ Sink = (*fakeSink)(nil)

func newFakeSink(name string) *fakeSink {
	return &fakeSink{name: name, failOnce: map[string]bool{}, got: map[string]int{}}
}

func (s *fakeSink) Name() string { return s.name }

func (s *fakeSink) Connect(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connects++
	if s.refuse {
		return ErrUnavailable
	}
	s.connected = true
	return nil
}

func (s *fakeSink) Write(_ context.Context, batch []*Outgoing, ack AckFunc) error {
	s.pending.Add(1)
	go func() {
		defer s.pending.Done()
		for _, m := range batch {
			s.mu.Lock()
			var err error
			switch {
			case !s.connected:
				err = ErrNotConnected
			case s.failOnce[m.ID]:
				delete(s.failOnce, m.ID)
				err = errors.New("injected failure")
			default:
				s.got[m.ID]++
			}
			s.mu.Unlock()
			ack(m, err)
		}
	}()
	return nil
}

func (s *fakeSink) Close(context.Context) error {
	s.pending.Wait()
	s.mu.Lock()
	s.connected = false
	s.mu.Unlock()
	return nil
}

func (s *fakeSink) ids() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.got))
	for k, v := range s.got {
		out[k] = v
	}
	return out
}

// splitEncoder emits one message per byte of the payload, to exercise
// records with several outputs.
var splitEncoder = EncoderFunc(func(rec record.Record, emit func(record.Output)) error {
	if len(rec.Payload) == 0 {
		return ErrEmptyPayload
	}
	for i, b := range rec.Payload {
		emit(record.Output{Stream: "test.split", Key: rec.Key, Value: []byte{b}, Index: i})
	}
	return nil
})

func unitConfig() Config {
	cfg := DefaultConfig()
	cfg.AgentID = "a1"
	cfg.AckInterval = 5 * time.Millisecond
	cfg.BackoffMin = time.Millisecond
	cfg.BackoffMax = 10 * time.Millisecond
	cfg.ReadBatch = 7
	cfg.MaxInFlight = 20
	return cfg
}

func TestForwarderWatermarkAndRetry(t *testing.T) {
	src := newMemSource()
	sink := newFakeSink(SinkKafka)
	// Fail a message in the middle of a multi-message record: the record must
	// be sent again, and the spool acked past it only after that.
	sink.failOnce["a1:5:1"] = true
	f, err := newForwarder(unitConfig(), src, splitEncoder, sink, nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		src.Append(record.Record{Kind: record.KindBMP, Key: []byte("r1"), Payload: []byte{byte(i), 1, 2}})
	}
	startForwarder(t, f)
	testenv.Eventually(t, 10*time.Second, "spool acked through 50", func() bool { return src.Acked() == 50 })

	got := sink.ids()
	for seq := 1; seq <= 50; seq++ {
		for idx := range 3 {
			if id := MessageID("a1", uint64(seq), idx); got[id] == 0 {
				t.Errorf("id %s never delivered", id)
			}
		}
	}
	if sink.connects < 2 {
		t.Errorf("connects = %d, want a reconnect after the injected failure", sink.connects)
	}
}

// A record that cannot be encoded, for an error or a panic of its encoder,
// costs that record (a dead letter), not the records around it or the process.
func TestForwarderDeadLetter(t *testing.T) {
	panicky := EncoderFunc(func(rec record.Record, emit func(record.Output)) error {
		if string(rec.Payload) == "poison" {
			panic("decoder bug")
		}
		return rawBMP.Encode(rec, emit)
	})
	oversize := append([]byte("poison"), make([]byte, 20000)...)
	for _, tt := range []struct {
		name    string
		enc     Encoder
		poison  record.Kind
		payload []byte
		dlq     bool
		panics  float64
	}{
		{"unknown kind", rawBMP, record.Kind(99), []byte("poison"), true, 0},
		{"encoder panic", panicky, record.KindBMP, []byte("poison"), true, 1},
		{"oversize", rawBMP, record.KindBMP, oversize, true, 0},
		// With the dlq disabled the record is dropped (counted), and the
		// records after it still flow.
		{"unknown kind, dlq disabled", rawBMP, record.Kind(99), []byte("poison"), false, 0},
		{"encoder panic, dlq disabled", panicky, record.KindBMP, []byte("poison"), false, 1},
		{"oversize, dlq disabled", rawBMP, record.KindBMP, oversize, false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := newMemSource()
			sink := newFakeSink(SinkKafka)
			cfg := unitConfig()
			cfg.DLQ.Enabled = tt.dlq
			cfg.Kafka.MaxMessageBytes = 16 << 10
			f, err := newForwarder(cfg, src, tt.enc, sink, nil, nil, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			src.Append(bmpRecord("192.0.2.1", 40))
			src.Append(record.Record{Kind: tt.poison, Key: []byte("x"), Payload: tt.payload})
			src.Append(bmpRecord("192.0.2.1", 40))
			startForwarder(t, f)
			testenv.Eventually(t, 10*time.Second, "spool acked through 3", func() bool { return src.Acked() == 3 })
			got := sink.ids()
			want := map[string]int{"a1:1": 1, "a1:2": 1, "a1:3": 1}
			outcome := "sent"
			if !tt.dlq {
				want["a1:2"], outcome = 0, "dropped"
			}
			for id, n := range want {
				if got[id] != n {
					t.Errorf("id %s delivered %d times, want %d", id, got[id], n)
				}
			}
			if v := testutil.ToFloat64(f.m.deadLetters.WithLabelValues(outcome)); v != 1 {
				t.Errorf("dead letters %s = %v, want 1", outcome, v)
			}
			if v := testutil.ToFloat64(f.m.panics); v != tt.panics {
				t.Errorf("encoder panics = %v, want %v", v, tt.panics)
			}
		})
	}
}

func TestForwarderFailoverAndBack(t *testing.T) {
	src := newMemSource()
	primary := newFakeSink(SinkKafka)
	primary.refuse = true
	secondary := newFakeSink(SinkNATS)
	cfg := unitConfig()
	cfg.FailoverAfter = 50 * time.Millisecond
	cfg.FailbackAfter = 50 * time.Millisecond
	cfg.ProbeInterval = 10 * time.Millisecond
	prober := &probingSink{fakeSink: primary}
	f, err := newForwarder(cfg, src, rawBMP, prober, secondary, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	src.Append(bmpRecord("r", 10), bmpRecord("r", 10))
	startForwarder(t, f)
	testenv.Eventually(t, 10*time.Second, "failover to nats", func() bool { return f.ActiveSink() == SinkNATS })
	testenv.Eventually(t, 10*time.Second, "drained to nats", func() bool { return src.Acked() == 2 })
	primary.mu.Lock()
	primary.refuse = false
	primary.mu.Unlock()
	testenv.Eventually(t, 10*time.Second, "back on kafka", func() bool { return f.ActiveSink() == SinkKafka })
	src.Append(bmpRecord("r", 10))
	testenv.Eventually(t, 10*time.Second, "record 3 acked", func() bool { return src.Acked() == 3 })
	if primary.ids()["a1:3"] != 1 {
		t.Errorf("record 3 did not go to kafka after failback: %v", primary.ids())
	}
	if secondary.ids()["a1:1"] != 1 || secondary.ids()["a1:2"] != 1 {
		t.Errorf("records 1, 2 did not go to nats: %v", secondary.ids())
	}
}

type probingSink struct{ *fakeSink }

func (p *probingSink) Probe(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refuse {
		return ErrUnavailable
	}
	return nil
}

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.AgentID = "edge1"
		c.Topics.Streams = append(record.Streams{{Name: StreamBMPRaw, Format: record.FormatRaw, Kind: record.KindBMP}}, Streams()...)
		return c
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // substring of the error, "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"no agent", func(c *Config) { c.AgentID = "" }, "forwarder.agent_id"},
		{"dotted agent", func(c *Config) { c.AgentID = "a.b" }, "forwarder.agent_id"},
		{"no brokers", func(c *Config) { c.Kafka.Brokers = nil }, "forwarder.kafka.brokers: at least one broker is required"},
		{"bad compression", func(c *Config) { c.Kafka.Compression = "brotli" }, "forwarder.kafka.compression"},
		{"zstd", func(c *Config) { c.Kafka.Compression = "zstd" }, ""},
		{"bad compacted compression", func(c *Config) { c.Kafka.CompactedCompression = "brotli" }, "forwarder.kafka.compacted_compression"},
		{"compacted compression follows", func(c *Config) { c.Kafka.CompactedCompression = "" }, ""},
		{"bad sasl", func(c *Config) { c.Kafka.SASL.Mechanism = "GSSAPI" }, "forwarder.kafka.sasl.mechanism"},
		{"scram without user", func(c *Config) { c.Kafka.SASL.Mechanism = "SCRAM-SHA-512" }, "forwarder.kafka.sasl.user"},
		{"tls half cert", func(c *Config) { c.Kafka.TLS = TLSConfig{Enabled: true, CertFile: "x"} }, "forwarder.kafka.tls.cert_file"},
		{"nats no url", func(c *Config) { c.NATS.Enabled = true; c.NATS.URL = "" }, "forwarder.nats.url"},
		{"nats two auths", func(c *Config) { c.NATS.Enabled = true; c.NATS.Token = "t"; c.NATS.User = "u" }, "forwarder.nats.creds_file"},
		{"backoff order", func(c *Config) { c.BackoffMax = time.Millisecond }, "forwarder.backoff_max"},
		{"version", func(c *Config) { c.Kafka.Version = "x" }, "forwarder.kafka.version"},
		{"no producers", func(c *Config) { c.Kafka.Producers = 0 }, "forwarder.kafka.producers"},
		{"too many producers", func(c *Config) { c.Kafka.Producers = 17 }, "forwarder.kafka.producers"},
		{"override of a stream that does not exist", func(c *Config) { c.Topics.Overrides = map[string]string{"bmp.raww": "x"} }, "forwarder.topics.overrides.bmp.raww: no stream"},
		{"ensure of a stream that does not exist", func(c *Config) { c.Topics.Ensure = []string{"bmp.raw", "bogus"} }, "forwarder.topics.ensure[1]: no stream \"bogus\""},
		{"negative flush frequency", func(c *Config) { c.Kafka.FlushFrequency = -time.Millisecond }, "forwarder.kafka.flush_frequency: must not be negative"},
		{"message limit below a dead letter", func(c *Config) { c.Kafka.MaxMessageBytes = 4096 }, "forwarder.kafka.max_message_bytes: must be at least 16384"},
		{"one producer", func(c *Config) { c.Kafka.Producers = 1 }, ""},
		{"in-flight bytes too small", func(c *Config) { c.MaxInFlightBytes = 1000 }, "forwarder.max_in_flight_bytes: must be at least 65536"},
		{"negative encoders", func(c *Config) { c.Encoders = -1 }, "forwarder.encoders"},
		{"too many encoders", func(c *Config) { c.Encoders = 5000 }, "forwarder.encoders"},
		{"four encoders", func(c *Config) { c.Encoders = 4 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mutate(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestTopicNames(t *testing.T) {
	tests := []struct {
		cfg    TopicsConfig
		stream string
		want   string
	}{
		{TopicsConfig{Prefix: "bgpedge."}, "bmp.route.pre-policy", "bgpedge.bmp.route.pre-policy"},
		{TopicsConfig{Prefix: "", ShortRouteNames: true}, "bmp.route.pre-policy", "bmp.pre-policy"},
		{TopicsConfig{Prefix: "", ShortRouteNames: true}, "bmp.raw", "bmp.raw"},
		{TopicsConfig{Prefix: "x.", Overrides: map[string]string{"dlq": "dead"}}, "dlq", "dead"},
		// A source may declare a default topic other than the stream's name.
		{TopicsConfig{Prefix: "x.", Streams: record.Streams{{Name: "src.route.a", Topic: "src.route.alpha"}}}, "src.route.a", "x.src.route.alpha"},
		{TopicsConfig{Prefix: "", ShortRouteNames: true, Streams: record.Streams{{Name: "src.route.a", Topic: "src.route.alpha"}}}, "src.route.a", "src.alpha"},
	}
	for _, tt := range tests {
		if got := tt.cfg.Topic(tt.stream); got != tt.want {
			t.Errorf("Topic(%q) with %+v = %q, want %q", tt.stream, tt.cfg, got, tt.want)
		}
	}
	n := NATSConfig{SubjectPrefix: "bgpedge"}
	subj := n.Subject("edge1", "bmp.route.loc-rib")
	if subj != "bgpedge.edge1.bmp.route.loc-rib" {
		t.Errorf("subject = %q", subj)
	}
	if s, ok := n.StreamOfSubject(subj); !ok || s != "bmp.route.loc-rib" {
		t.Errorf("StreamOfSubject(%q) = %q, %v", subj, s, ok)
	}
}

func TestMessageID(t *testing.T) {
	for _, tt := range []struct {
		seq uint64
		idx int
		id  string
	}{{1, -1, "e:1"}, {42, 0, "e:42:0"}, {1 << 40, 7, "e:1099511627776:7"}} {
		id := MessageID("e", tt.seq, tt.idx)
		if id != tt.id {
			t.Errorf("MessageID = %q, want %q", id, tt.id)
		}
		a, s, i, err := ParseMessageID(id)
		if err != nil || a != "e" || s != tt.seq || i != tt.idx {
			t.Errorf("ParseMessageID(%q) = %q %d %d %v", id, a, s, i, err)
		}
	}
	for _, bad := range []string{"", "e", "e:x", "e:1:-1", "e:1:2:3"} {
		if _, _, _, err := ParseMessageID(bad); err == nil {
			t.Errorf("ParseMessageID(%q) succeeded", bad)
		}
	}
}

// The arena's ids are MessageID's, and what it hands out never overlaps:
// sinks hold messages and headers until they are acknowledged, long after
// later ones were carved from the same chunks.
func TestOutArena(t *testing.T) {
	var a outArena
	type carved struct {
		m   *Outgoing
		h   []Header
		id  string
		exp string
	}
	var got []carved
	for i := range 3*arenaChunk + 7 {
		seq, idx := uint64(i)*7919+1, i%4-1
		m := a.msg()
		if m.Seq != 0 || m.ID != "" || m.Key != nil || m.Value != nil || m.Headers != nil {
			t.Fatalf("message %d not zeroed: %+v", i, *m)
		}
		m.Seq = seq
		n := 1 + i%6
		h := a.headers(n)
		if len(h) != 0 || cap(h) != n {
			t.Fatalf("headers(%d) = len %d cap %d", n, len(h), cap(h))
		}
		for j := range n {
			h = append(h, Header{Key: "k", Value: strconv.Itoa(i*10 + j)})
		}
		// Appending past the requested room must not clobber a neighbour.
		h = append(h, Header{Key: "extra", Value: strconv.Itoa(i)})
		id := a.id("edge-1", seq, idx)
		got = append(got, carved{m, h, id, MessageID("edge-1", seq, idx)})
	}
	for i, c := range got {
		if c.id != c.exp {
			t.Errorf("id %d = %q, want %q", i, c.id, c.exp)
		}
		if c.m.Seq != uint64(i)*7919+1 {
			t.Errorf("message %d overwritten: seq %d", i, c.m.Seq)
		}
		for j, h := range c.h[:len(c.h)-1] {
			if h.Value != strconv.Itoa(i*10+j) {
				t.Errorf("header %d of message %d overwritten: %+v", j, i, h)
			}
		}
		if last := c.h[len(c.h)-1]; last.Value != strconv.Itoa(i) {
			t.Errorf("extra header of message %d overwritten: %+v", i, last)
		}
	}
	if long := strings.Repeat("a", 40000); a.id(long, 1, -1) != long+":1" {
		t.Error("id longer than a chunk")
	}
}

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := newForwarder(unitConfig(), newMemSource(), rawBMP, newFakeSink(SinkKafka), nil, nil, reg); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

func TestEncodeIndexes(t *testing.T) {
	tests := []struct {
		name string
		enc  Encoder
		want []string
	}{
		{"raw single", rawBMP, []string{"a1:9"}},
		{"given indexes kept", EncoderFunc(func(_ record.Record, emit func(record.Output)) error {
			emit(record.Output{Stream: "s", Index: 0})
			emit(record.Output{Stream: "s", Index: 2})
			return nil
		}), []string{"a1:9:0", "a1:9:2"}},
		{"duplicate indexes renumbered", EncoderFunc(func(_ record.Record, emit func(record.Output)) error {
			emit(record.Output{Stream: "s"})
			emit(record.Output{Stream: "s"})
			return nil
		}), []string{"a1:9:0", "a1:9:1"}},
		{"encode error is a dead letter", Mux{}, []string{"a1:9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := newForwarder(unitConfig(), newMemSource(), tt.enc, newFakeSink(SinkKafka), nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			rec := bmpRecord("r", 10)
			rec.Seq = 9
			out := f.encode(rec, nil, f.cfg.Kafka.MaxMessageBytes)
			var got []string
			for _, m := range out {
				got = append(got, m.ID)
				if headerValue2(m.AllHeaders(), HeaderID) != m.ID {
					t.Errorf("id header %q != id %q", headerValue2(m.AllHeaders(), HeaderID), m.ID)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("ids %v, want %v", got, tt.want)
			}
		})
	}
}

func headerValue2(hs []Header, key string) string {
	for _, h := range hs {
		if h.Key == key {
			return h.Value
		}
	}
	return ""
}

// A record whose output the brokers would reject for ever goes to the dlq,
// cut to the size limit, instead of blocking the queue.
func TestOversizeRecordIsDeadLettered(t *testing.T) {
	cfg := unitConfig()
	cfg.Kafka.MaxMessageBytes = 16 << 10
	f, err := newForwarder(cfg, newMemSource(), rawBMP, newFakeSink(SinkKafka), nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	rec := bmpRecord("192.0.2.1", 40000)
	rec.Seq = 4
	out := f.encode(rec, nil, cfg.Kafka.MaxMessageBytes)
	if len(out) != 1 || out[0].Stream != StreamDLQ || out[0].ID != "a1:4" {
		t.Fatalf("outputs %+v, want one dead letter", out)
	}
	if n := len(out[0].Key) + len(out[0].Value); n > cfg.Kafka.MaxMessageBytes {
		t.Errorf("dead letter of %d bytes exceeds the limit", n)
	}
	if e := headerValue2(out[0].AllHeaders(), HeaderError); !strings.Contains(e, ErrTooLarge.Error()) {
		t.Errorf("error header %q", e)
	}
	small := bmpRecord("192.0.2.1", 100)
	if out := f.encode(small, nil, cfg.Kafka.MaxMessageBytes); len(out) != 1 || out[0].Stream != StreamBMPRaw {
		t.Errorf("small record: %+v", out)
	}
}

// stallingSink is a connected sink whose writes wait for the session's
// context and then fail their messages with its error, as the Kafka and
// NATS sinks do at shutdown.
type stallingSink struct {
	*fakeSink
	entered chan struct{}
	once    sync.Once
}

func (s *stallingSink) Write(ctx context.Context, batch []*Outgoing, ack AckFunc) error {
	s.once.Do(func() { close(s.entered) })
	<-ctx.Done()
	for _, m := range batch {
		ack(m, ctx.Err())
	}
	return ctx.Err()
}

// TestShutdownIsNotAWriteError: a write cut short by shutdown is not
// counted as a sink failure.
func TestShutdownIsNotAWriteError(t *testing.T) {
	src := newMemSource()
	sink := &stallingSink{fakeSink: newFakeSink(SinkKafka), entered: make(chan struct{})}
	f, err := newForwarder(unitConfig(), src, rawBMP, sink, nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	src.Append(bmpRecord("192.0.2.1", 40))
	stop := startForwarder(t, f)
	<-sink.entered
	stop()
	if v := testutil.ToFloat64(f.m.errors.WithLabelValues(SinkKafka, "write")); v != 0 {
		t.Fatalf("sink_errors{write} = %v after a clean shutdown, want 0", v)
	}
}
