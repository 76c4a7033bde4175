package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
)

// reachDrainer is a fake forwarder that delivers to active and, asked
// before it runs, reaches reach.
type reachDrainer struct {
	fakeDrainer
	active, reach string
	asked         *atomic.Int32
}

func (d *reachDrainer) ActiveSink() string { return d.active }

// Rank ranks as the default forwarder.sinks with nats: kafka, then nats.
func (d *reachDrainer) Rank(sink string) int {
	return map[string]int{forwarder.SinkKafka: 2, forwarder.SinkNATS: 1}[sink]
}

func (d *reachDrainer) Reach(context.Context) (string, error) {
	d.asked.Add(1)
	if d.reach == forwarder.SinkKafka {
		return d.reach, nil
	}
	return d.reach, errors.New("kafka probe: connection refused")
}

// reachAgent runs an agent over fake parts whose forwarders are
// reachDrainers delivering to active and reaching what reach says when
// built; asked counts the forwarders asked.
func reachAgent(t *testing.T, cfg Config, active string, reach func() string) (a *Agent, asked *atomic.Int32, built func(int) *reachDrainer) {
	t.Helper()
	asked = new(atomic.Int32)
	var mu sync.Mutex
	var drainers []*reachDrainer
	b := (&fakeParts{}).builders()
	b.NewForwarder = func(Config, Spool, *slog.Logger, prometheus.Registerer) (drainer, error) {
		mu.Lock()
		defer mu.Unlock()
		d := &reachDrainer{fakeDrainer: fakeDrainer{stopped: make(chan struct{})}, active: active, reach: reach(), asked: asked}
		drainers = append(drainers, d)
		return d, nil
	}
	a, err := New(Options{Config: cfg, Logger: testLogger(t), Builders: b})
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, a)
	built = func(i int) *reachDrainer {
		mu.Lock()
		defer mu.Unlock()
		return drainers[i]
	}
	testenv.Eventually(t, 5*time.Second, "forwarder running", func() bool { return built(0).running.Load() == 1 })
	return a, asked, built
}

// TestApplyRefusesForwarderThatDeliversLess: new forwarder settings are
// taken only if they reach a sink at least as good as the one the running
// forwarder delivers to (kafka, then nats, then none), and only asked when
// the destinations change.
func TestApplyRefusesForwarderThatDeliversLess(t *testing.T) {
	cases := []struct {
		active, reach string
		destinations  bool // the change moves brokers, not only a tuning knob
		refused       bool
		asked         int32
	}{
		{active: "kafka", reach: "kafka", destinations: true, asked: 1},
		{active: "kafka", reach: "nats", destinations: true, refused: true, asked: 1},
		{active: "kafka", reach: "none", destinations: true, refused: true, asked: 1},
		{active: "nats", reach: "kafka", destinations: true, asked: 1},
		{active: "nats", reach: "nats", destinations: true, asked: 1},
		{active: "nats", reach: "none", destinations: true, refused: true, asked: 1},
		{active: "none", reach: "none", destinations: true, asked: 0}, // nothing delivers: nothing to lose
		{active: "kafka", reach: "none", destinations: false, asked: 0},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s-to-%s-destinations-%v", tc.active, tc.reach, tc.destinations), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Forwarder.Enabled = true
			a, asked, built := reachAgent(t, cfg, tc.active, func() string { return tc.reach })
			next := a.Config()
			next.Forwarder.ReadBatch = 17
			if tc.destinations {
				next.Forwarder.Kafka.Brokers = []string{"192.0.2.1:9092"}
			}
			err := a.Apply(t.Context(), next)
			if got := asked.Load(); got != tc.asked {
				t.Fatalf("new forwarder asked %d times, want %d", got, tc.asked)
			}
			if !tc.refused {
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrDeliversLess) {
				t.Fatalf("Apply = %v, want ErrDeliversLess", err)
			}
			for _, s := range []string{"delivers to " + tc.active, "reach " + tc.reach, "connection refused"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if a.Config().Forwarder.ReadBatch == 17 {
				t.Fatal("configuration changed although the apply was refused")
			}
			if built(0).running.Load() != 1 || built(1).running.Load() != 0 {
				t.Fatal("the running forwarder was replaced")
			}
		})
	}
}

// TestApplyRealForwarderDeliversNoLess runs the real forwarder against a
// real broker and JetStream: a reload to a broker that refuses connections
// is refused while Kafka delivers, even when NATS would take the records;
// an agent whose forwarder reaches nothing takes new settings and delivers.
func TestApplyRealForwarderDeliversNoLess(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	n := testenv.StartNATS(t)
	const refused = "127.0.0.1:1"
	cfg := testConfig(t)
	cfg.Forwarder.Enabled = true
	cfg.Forwarder.Kafka.Brokers = brokers
	cfg.Forwarder.Kafka.Partitions = 1
	cfg.Forwarder.Topics.Prefix = fmt.Sprintf("agentreach%d.", time.Now().UnixNano())
	cfg.Forwarder.NATS.Enabled = true
	cfg.Forwarder.NATS.URL = n.URL()
	cfg.Forwarder.FailoverAfter = time.Second
	a, err := New(Options{Config: cfg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, a)
	testenv.Eventually(t, 30*time.Second, "forwarder on kafka", func() bool { return a.Status().Sink == forwarder.SinkKafka })

	next := a.Config()
	next.Forwarder.Kafka.Brokers = []string{refused}
	err = a.Apply(t.Context(), next)
	if !errors.Is(err, ErrDeliversLess) || !strings.Contains(err.Error(), "reach nats") || !strings.Contains(err.Error(), refused) {
		t.Fatalf("Apply to a refused broker with NATS up = %v, want ErrDeliversLess naming nats and %s", err, refused)
	}
	next.Forwarder.NATS.URL = "nats://" + refused
	if err := a.Apply(t.Context(), next); !errors.Is(err, ErrDeliversLess) || !strings.Contains(err.Error(), "reach none") {
		t.Fatalf("Apply to nothing reachable = %v, want ErrDeliversLess naming none", err)
	}
	if got := a.Config().Forwarder.Kafka.Brokers; len(got) != 1 || got[0] != brokers[0] {
		t.Fatalf("brokers now %v", got)
	}
	// A tuning change does not ask: it is taken even though it cannot be
	// compared, and the forwarder goes on delivering.
	next = a.Config()
	next.Forwarder.ReadBatch = 321
	if err := a.Apply(t.Context(), next); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "new forwarder on kafka", func() bool { return a.Status().Sink == forwarder.SinkKafka })

	// On JetStream (Kafka refused), new settings that still reach only
	// JetStream are taken; so are settings that reach Kafka again.
	b := testConfig(t)
	b.Forwarder = cfg.Forwarder
	b.Forwarder.Kafka.Brokers = []string{refused}
	a2, err := New(Options{Config: b, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, a2)
	testenv.Eventually(t, 30*time.Second, "forwarder failed over to nats", func() bool { return a2.Status().Sink == forwarder.SinkNATS })
	next = a2.Config()
	next.Forwarder.Kafka.Brokers = []string{"127.0.0.1:2"}
	if err := a2.Apply(t.Context(), next); err != nil {
		t.Fatalf("Apply from nats to nats: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, "new forwarder failed over to nats", func() bool { return a2.Status().Sink == forwarder.SinkNATS })
	next.Forwarder.Kafka.Brokers = brokers
	if err := a2.Apply(t.Context(), next); err != nil {
		t.Fatalf("Apply from nats to kafka: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, "forwarder on kafka after the reload", func() bool { return a2.Status().Sink == forwarder.SinkKafka })
}

// TestFleetDocumentThatDeliversLess: a central document whose brokers do
// not answer is reported failed and leaves the running forwarder alone;
// central publishing the same bytes again tries it again, and it applies
// once its brokers answer.
func TestFleetDocumentThatDeliversLess(t *testing.T) {
	cfg := testConfig(t)
	cfg.Forwarder.Enabled = true
	_, local := fleetOnNATS(t, &cfg, "edge-4", "pop-f")
	var reach atomic.Value
	reach.Store(forwarder.SinkNone)
	a, asked, _ := reachAgent(t, cfg, forwarder.SinkKafka, func() string { return reach.Load().(string) })
	status, docs := watchFleet(t, a, cfg, local, testLogger(t))
	doc := []byte("forwarder:\n  kafka:\n    brokers: [\"192.0.2.7:9092\"]\n")
	publish := func() uint64 {
		rev, err := docs.Put(t.Context(), "agent.edge-4", doc)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	rev := publish()
	testenv.Eventually(t, 10*time.Second, "document refused", func() bool {
		st := readStatus(t, status, "edge-4")
		return st.State == FleetFailed && st.Revision == rev && strings.Contains(st.Error, ErrDeliversLess.Error())
	})
	if got := a.Config().Forwarder.Kafka.Brokers; len(got) != 1 || got[0] == "192.0.2.7:9092" {
		t.Fatalf("brokers %v after a refused document", got)
	}
	rev = publish() // same bytes, brokers still silent
	testenv.Eventually(t, 10*time.Second, "republished document tried again", func() bool {
		st := readStatus(t, status, "edge-4")
		return st.State == FleetFailed && st.Revision == rev && asked.Load() == 2
	})
	reach.Store(forwarder.SinkKafka)
	rev = publish()
	testenv.Eventually(t, 10*time.Second, "document applied once its brokers answer", func() bool {
		st := readStatus(t, status, "edge-4")
		return st.State == FleetApplied && st.Revision == rev
	})
	if got := a.Config().Forwarder.Kafka.Brokers; len(got) != 1 || got[0] != "192.0.2.7:9092" {
		t.Fatalf("brokers %v after the document applied", got)
	}
	if asked.Load() != 3 {
		t.Fatalf("new forwarders asked %d times, want 3", asked.Load())
	}
}

// TestConfigValidateProbe: `config validate --probe` asks the file's
// forwarder settings what they reach, as a reload would, against a real
// broker and JetStream.
func TestConfigValidateProbe(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	n := testenv.StartNATS(t)
	const refused = "127.0.0.1:1"
	dir := t.TempDir()
	write := func(name, kafka, nats string) string {
		p := filepath.Join(dir, name)
		doc := "agent:\n  id: edge-9\nforwarder:\n  enabled: true\n  kafka:\n    brokers: [\"" + kafka + "\"]\n"
		if nats != "" {
			doc += "  nats:\n    enabled: true\n    url: " + nats + "\n"
		}
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, file     string
		code           int
		stdout, stderr []string
	}{
		{"kafka", write("kafka.yaml", brokers[0], ""), 0, []string{"configuration OK", "forwarder reaches kafka"}, nil},
		{"nats only", write("nats.yaml", refused, n.URL()), 0, []string{"forwarder reaches nats", "before it: kafka probe", refused}, nil},
		{"nothing", write("none.yaml", refused, "nats://"+refused), 1, []string{"configuration OK"}, []string{"reaches no sink", "kafka probe", "nats probe"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(t.Context(), []string{"config", "validate", "--probe", "--config", tc.file}, strings.NewReader(""), &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", code, tc.code, stdout.String(), stderr.String())
			}
			for _, s := range tc.stdout {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout %q does not say %q", stdout.String(), s)
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr %q does not say %q", stderr.String(), s)
				}
			}
		})
	}
}
