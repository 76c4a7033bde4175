package forwarder

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// writeAcked hands batch to a connected sink and waits for every ack.
func writeAcked(t *testing.T, s Sink, batch []*Outgoing) {
	t.Helper()
	acks := make(chan error, len(batch))
	if err := s.Write(context.Background(), batch, func(_ *Outgoing, err error) { acks <- err }); err != nil {
		t.Fatal(err)
	}
	for range batch {
		select {
		case err := <-acks:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(time.Minute):
			t.Fatal("no ack within a minute")
		}
	}
}

// TestRIBTombstones: a message with a nil value on bmp.rib is a Kafka
// tombstone (null value) in a topic bgpedge created compacted; on NATS it
// travels as an empty message with the bgpedge-tombstone header, and the
// bridge turns it back into a tombstone, while an empty but non-nil value
// stays a value.
// StreamRIB is the route state's stream, declared compacted by package rib.
const StreamRIB = "bmp.rib"

func TestRIBTombstones(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	n := testenv.StartNATS(t)
	cfg := testConfig(t, brokers)
	cfg.NATS.Enabled, cfg.NATS.URL = true, n.URL()
	cfg.Topics.Streams = append(slices.Clone(testStreams), record.Stream{Name: StreamRIB, Format: record.FormatJSON, Compact: true})
	topic := cfg.Topics.Topic(StreamRIB)
	deleteTopicsAtEnd(t, brokers, cfg, StreamRIB, StreamBMPRaw, StreamDLQ)
	msg := func(id string, v []byte) *Outgoing {
		return &Outgoing{ID: id, Stream: StreamRIB, Key: []byte("192.0.2.1||198.51.100.1||10.0.0.0/24|adj-rib-in-pre|ipv4-unicast|0"), Value: v,
			Headers: []Header{{HeaderID, id}}}
	}

	k := NewKafkaSink(cfg.Kafka, cfg.Topics, testLogger(t))
	if err := k.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	writeAcked(t, k, []*Outgoing{msg("edge1:1:1", []byte(`{"v":1}`)), msg("edge1:2:1", nil)})
	_ = k.Close(context.Background())

	ns := NewNATSSink(cfg.NATS, cfg.AgentID, testLogger(t))
	if err := ns.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	writeAcked(t, ns, []*Outgoing{msg("edge1:3:1", []byte{}), msg("edge1:4:1", nil)})
	_ = ns.Close(context.Background())
	if moved := bridgeAll(t, cfg); moved != 2 {
		t.Fatalf("bridge moved %d messages, want 2", moved)
	}

	admin, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	res, err := admin.DescribeConfigs([]*sarama.ConfigResource{{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"cleanup.policy"}}}, sarama.DescribeConfigsOptions{})
	if err != nil || len(res) != 1 || len(res[0].Configs) != 1 || res[0].Configs[0].Value != "compact" {
		t.Fatalf("cleanup.policy of %s: %+v, %v; want compact", topic, res, err)
	}

	got := map[string]bool{} // id → value is null
	testenv.ConsumeEach(t, brokers, topic, time.Minute, func(m *sarama.ConsumerMessage) {
		got[headerValue(m.Headers, HeaderID)] = m.Value == nil
	})
	want := map[string]bool{"edge1:1:1": false, "edge1:2:1": true, "edge1:3:1": false, "edge1:4:1": true}
	for id, null := range want {
		if v, ok := got[id]; !ok || v != null {
			t.Errorf("%s: in kafka %v, null value %v; want null %v", id, ok, v, null)
		}
	}
}
