package forwarder

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

func setRefuse(s *fakeSink, refuse bool) {
	s.mu.Lock()
	s.refuse = refuse
	s.mu.Unlock()
}

// Three sinks by role: with the first two down the third drains; the
// second, once healthy, takes over from the third, and the first from the
// second; each record goes where the sink active at the time is.
func TestSinksByRoleFailoverAndFailbackInOrder(t *testing.T) {
	a, b, c := newFakeSink("a"), newFakeSink("b"), newFakeSink("c")
	setRefuse(a, true)
	setRefuse(b, true)
	cfg := unitConfig()
	cfg.FailoverAfter = 50 * time.Millisecond
	cfg.FailbackAfter = 50 * time.Millisecond
	cfg.ProbeInterval = 10 * time.Millisecond
	src := newMemSource()
	f, err := newForwarderSinks(cfg, src, rawBMP, []Sink{&probingSink{a}, &probingSink{b}, c}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if f.Rank("a") != 3 || f.Rank("c") != 1 || f.Rank(SinkNone) != 0 {
		t.Errorf("ranks a %d, c %d, none %d", f.Rank("a"), f.Rank("c"), f.Rank(SinkNone))
	}
	startForwarder(t, f)
	src.Append(bmpRecord("r", 10))
	testenv.Eventually(t, 10*time.Second, "on c", func() bool { return f.ActiveSink() == "c" && src.Acked() == 1 })
	setRefuse(b, false)
	testenv.Eventually(t, 10*time.Second, "back on b", func() bool { return f.ActiveSink() == "b" })
	src.Append(bmpRecord("r", 10))
	testenv.Eventually(t, 10*time.Second, "record 2 acked", func() bool { return src.Acked() == 2 })
	setRefuse(a, false)
	testenv.Eventually(t, 10*time.Second, "back on a", func() bool { return f.ActiveSink() == "a" })
	src.Append(bmpRecord("r", 10))
	testenv.Eventually(t, 10*time.Second, "record 3 acked", func() bool { return src.Acked() == 3 })
	if c.ids()["a1:1"] != 1 || b.ids()["a1:2"] != 1 || a.ids()["a1:3"] != 1 {
		t.Errorf("records went to a %v, b %v, c %v; want 3 to a, 2 to b, 1 to c", a.ids(), b.ids(), c.ids())
	}
	if v := testutil.ToFloat64(f.m.failovers); v < 1 {
		t.Errorf("failovers = %v", v)
	}
	// Every configured sink is a label value of the per-sink metrics.
	for _, s := range []string{"a", "b", "c", SinkNone} {
		if v := testutil.ToFloat64(f.m.active.WithLabelValues(s)); (s == "a") != (v == 1) {
			t.Errorf("active_sink{sink=%q} = %v", s, v)
		}
	}
}

// A file is closed max_file_age after it was opened, when its stream's next
// message arrives.
func TestFileSinkRotatesByAge(t *testing.T) {
	dir := t.TempDir()
	cfg := fileConfig(t, dir)
	cfg.File.MaxFileAge = time.Hour
	src := newMemSource()
	f, err := New(cfg, src, fileTestEncoder, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sink := f.sinks[0].(*FileSink)
	var clock atomic.Int64
	clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	sink.now = func() time.Time { return time.Unix(0, clock.Load()) }
	stop := startForwarder(t, f)
	src.Append(seqRecord(1, 100))
	testenv.Eventually(t, 10*time.Second, "record 1 acked", func() bool { return src.Acked() == 1 })
	clock.Add(int64(59 * time.Minute))
	src.Append(seqRecord(2, 100))
	testenv.Eventually(t, 10*time.Second, "record 2 acked", func() bool { return src.Acked() == 2 })
	clock.Add(int64(time.Minute))
	src.Append(seqRecord(3, 100))
	testenv.Eventually(t, 10*time.Second, "record 3 acked", func() bool { return src.Acked() == 3 })
	stop()
	raw := readStream(t, dir, StreamBMPRaw)
	if len(raw) != 2 || len(raw[0].recs) != 2 || raw[1].name.firstSeq != 3 {
		t.Fatalf("%d raw files; want records 1-2 in the first, 3 in the second", len(raw))
	}
	if v := testutil.ToFloat64(sink.m.rotations.WithLabelValues("age")); v != 2 { // bmp.raw and bmp.peer
		t.Errorf("age rotations = %v, want 2", v)
	}
}

func TestDestinationsChanged(t *testing.T) {
	base := DefaultConfig()
	base.AgentID = "a1"
	for _, tc := range []struct {
		name   string
		change func(c *Config)
		want   bool
	}{
		{"nothing", func(*Config) {}, false},
		{"a setting of no sink", func(c *Config) { c.AckInterval *= 2 }, false},
		{"nats settings, nats not listed", func(c *Config) { c.NATS.URL = "nats://192.0.2.1:4222" }, false},
		{"the list", func(c *Config) { c.Sinks = []string{SinkKafka, SinkFile} }, true},
		{"nats.enabled", func(c *Config) { c.NATS.Enabled = true }, true},
		{"kafka brokers", func(c *Config) { c.Kafka.Brokers = []string{"192.0.2.1:9092"} }, true},
		{"topics", func(c *Config) { c.Topics.Prefix = "x." }, true},
		{"agent id", func(c *Config) { c.AgentID = "a2" }, true},
	} {
		next := base
		next.Kafka.Brokers = slices.Clone(base.Kafka.Brokers)
		tc.change(&next)
		if got := DestinationsChanged(base, next); got != tc.want {
			t.Errorf("%s: DestinationsChanged = %v, want %v", tc.name, got, tc.want)
		}
	}
	cur := base
	cur.Sinks = []string{SinkFile}
	next := cur
	next.File.Dir = "/elsewhere"
	if !DestinationsChanged(cur, next) {
		t.Error("file.dir with file listed: unchanged")
	}
}
