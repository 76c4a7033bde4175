package forwarder

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

func routeEventJSON(t testing.TB) []byte {
	t.Helper()
	ev := record.Event{V: record.EventSchemaVersion, Type: "route", ID: "edge1:2:1", Agent: "edge1", Source: "bmp", Router: "192.0.2.1", Seq: 2,
		Peer:  &record.Peer{Address: "203.0.113.1", AS: 65001},
		Route: &record.Route{Action: "announce", Prefix: "198.51.100.0/24", AFI: 1, SAFI: 1, Family: "ipv4-unicast", NextHop: "203.0.113.1"}}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeAll sends msgs through a connected sink and waits for every ack.
func writeAll(t testing.TB, s Sink, msgs []*Outgoing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(len(msgs))
	var mu sync.Mutex
	var errs []error
	if err := s.Write(ctx, msgs, func(_ *Outgoing, err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		wg.Done()
	}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(errs) > 0 {
		t.Fatalf("acks with errors: %v", errs)
	}
}

func tailSample(t testing.TB) []*Outgoing {
	raw := bmpRecord("192.0.2.1", 64).Payload
	hdr := func(id, stream string) []Header {
		return []Header{{HeaderID, id}, {HeaderKind, "bmp"}, {HeaderRouter, "192.0.2.1"}, {HeaderAgent, "edge1"}, {HeaderStream, stream}}
	}
	return []*Outgoing{
		{Seq: 1, Index: -1, ID: "edge1:1", Stream: StreamBMPRaw, Key: []byte("192.0.2.1"), Value: raw, Headers: hdr("edge1:1", StreamBMPRaw)},
		{Seq: 2, Index: 1, ID: "edge1:2:1", Stream: StreamBMPRaw, Key: []byte("192.0.2.1"), Value: routeEventJSON(t), Headers: hdr("edge1:2:1", StreamBMPRaw)},
		// A tombstone, as bmp.rib carries when a route goes.
		{Seq: 3, Index: 2, ID: "edge1:3:2", Stream: StreamBMPRaw, Key: []byte("192.0.2.1"), Headers: hdr("edge1:3:2", StreamBMPRaw)},
	}
}

func TestTailKafka(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	cfg := testConfig(t, brokers)
	cfg.Topics.Ensure = []string{StreamBMPRaw}
	deleteTopicsAtEnd(t, brokers, cfg, StreamBMPRaw)
	cfg.Kafka.Partitions = 1 // one partition: the printed order is the produced order
	writeAll(t, NewKafkaSink(cfg.Kafka, cfg.Topics, nil), tailSample(t))

	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := Tail(ctx, TailOptions{Kafka: cfg.Kafka, Topic: cfg.Topics.Topic(StreamBMPRaw), FromBeginning: true, Limit: 3, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	topic := cfg.Topics.Topic(StreamBMPRaw)
	want := []string{
		topic + "[0]@0 edge1:1 bmp initiation router=192.0.2.1 len=64",
		topic + "[0]@1 edge1:2:1 bmp route router=192.0.2.1 peer=203.0.113.1 as=65001 announce ipv4-unicast 198.51.100.0/24 nh=203.0.113.1",
		topic + "[0]@2 edge1:3:2 tombstone",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("tail printed\n%s\nwant\n%s", out.String(), strings.Join(want, "\n"))
	}
}

func TestTailJetStreamJSON(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	cfg := DefaultConfig()
	cfg.NATS.Enabled = true
	cfg.NATS.URL = n.URL()
	writeAll(t, NewNATSSink(cfg.NATS, "edge1", nil), tailSample(t))

	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := Tail(ctx, TailOptions{NATS: cfg.NATS, Subject: "bgpedge.edge1.>", JSON: true, FromBeginning: true, Limit: 3, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("tail printed %d lines:\n%s", len(lines), out.String())
	}
	for i, l := range lines {
		var m TailedMessage
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d not JSON: %v\n%s", i, err, l)
		}
		if m.Subject != "bgpedge.edge1.bmp.raw" || m.StreamSeq == nil || *m.StreamSeq != uint64(i+1) || m.Key != "192.0.2.1" {
			t.Errorf("line %d: %s", i, l)
		}
		if i == 0 && (m.ID != "edge1:1" || m.Event != nil || !strings.HasPrefix(m.Summary, "bmp initiation")) {
			t.Errorf("raw line: %s", l)
		}
		if i == 2 && (m.ID != "edge1:3:2" || m.Event != nil || m.Bytes != 0 || m.Summary != "tombstone") {
			t.Errorf("tombstone line: %s", l)
		}
		if i == 1 {
			var ev record.Event
			if err := json.Unmarshal(m.Event, &ev); err != nil || ev.Route == nil || ev.Route.Prefix != "198.51.100.0/24" || m.ID != "edge1:2:1" {
				t.Errorf("event line: %s (%v)", l, err)
			}
		}
	}
}

func TestSummarize(t *testing.T) {
	raw := bmpRecord("r", 48).Payload
	tests := []struct {
		name  string
		value []byte
		want  string
	}{
		{"bmp", raw, "bmp initiation router=10.0.0.1 len=48"},
		{"bmp v4 type 1", []byte{4, 0, 0, 0, 6, 1}, "bmp statistics router=10.0.0.1 len=6"},
		{"openbmp envelope", append([]byte{'O', 'B', 'M', 'P', 1, 7, 0, 10, 0, 0}, raw...), "openbmp bmp initiation router=10.0.0.1 len=48"},
		{"json other", []byte(`{"a":1}`), "json 7 bytes"},
		{"bytes", []byte{1, 2, 3}, "3 bytes"},
		{"tombstone", nil, "tombstone"},
	}
	for _, tt := range tests {
		if got := Summarize(tt.value, "10.0.0.1"); got != tt.want {
			t.Errorf("%s: Summarize = %q, want %q", tt.name, got, tt.want)
		}
	}
}
