package forwarder

import (
	"errors"
	"strings"
	"testing"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
)

// TestReach asks real servers which sink a forwarder would deliver to: what
// a reload compares with the running forwarder before it swaps.
func TestReach(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	n := testenv.StartNATS(t)
	const refused = "127.0.0.1:1" // nothing listens on port 1

	cases := []struct {
		name      string
		configure func(*Config)
		want      string
		wantErr   []string // substrings of the error, none means nil
		wantIs    error
		existing  bool // the topics are created first
	}{
		{name: "kafka with its topics", want: SinkKafka, existing: true,
			configure: func(c *Config) { c.Kafka.CreateTopics = false }},
		{name: "kafka with missing topics it creates", want: SinkKafka,
			configure: func(c *Config) { c.Topics.Prefix += "fresh." }},
		{name: "kafka with missing topics it may not create", want: SinkNone, wantIs: ErrMissingTopic,
			configure: func(c *Config) { c.Topics.Prefix += "fresh."; c.Kafka.CreateTopics = false }},
		{name: "kafka down and nats up", want: SinkNATS, wantErr: []string{"kafka probe", refused},
			configure: func(c *Config) { c.Kafka.Brokers = []string{refused}; c.NATS.Enabled = true }},
		{name: "kafka up and nats down", want: SinkKafka,
			configure: func(c *Config) { c.NATS.Enabled = true; c.NATS.URL = "nats://" + refused }},
		{name: "both down", want: SinkNone, wantIs: ErrUnavailable, wantErr: []string{"kafka probe", "nats probe"},
			configure: func(c *Config) {
				c.Kafka.Brokers = []string{refused}
				c.NATS.Enabled, c.NATS.URL = true, "nats://"+refused
			}},
		{name: "kafka down without nats", want: SinkNone, wantIs: ErrUnavailable, wantErr: []string{"kafka probe"},
			configure: func(c *Config) { c.Kafka.Brokers = []string{refused} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, brokers)
			cfg.NATS.URL = n.URL()
			if tc.existing {
				k := NewKafkaSink(cfg.Kafka, cfg.Topics, testLogger(t))
				if err := k.Connect(t.Context()); err != nil {
					t.Fatal(err)
				}
				if err := k.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				deleteTopicsAtEnd(t, brokers, cfg, cfg.Topics.Ensure...)
			}
			if tc.configure != nil {
				tc.configure(&cfg)
			}
			f, err := New(cfg, newMemSource(), splitEncoder, testLogger(t), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.Reach(t.Context())
			if got != tc.want {
				t.Fatalf("Reach = %s (%v), want %s", got, err, tc.want)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Fatalf("error %v is not %v", err, tc.wantIs)
			}
			if len(tc.wantErr) == 0 && tc.wantIs == nil && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			for _, s := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), s) {
					t.Fatalf("error %v does not name %q", err, s)
				}
			}
			// Failback's probe stays strict: a topic not there yet keeps
			// the forwarder on NATS.
			if err := f.sinks[0].(Prober).Probe(t.Context()); got == SinkKafka && (err == nil) != tc.existing {
				t.Fatalf("failback probe with the topics there %v: %v", tc.existing, err)
			}
			if f.ActiveSink() != SinkNone {
				t.Fatalf("Reach changed the active sink to %s", f.ActiveSink())
			}
		})
	}
}
