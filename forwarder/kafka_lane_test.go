package forwarder

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// The lanes partition keyed messages exactly as sarama's default
// partitioner did, so a key stays on its partition across versions.
func TestHashPartitionMatchesSarama(t *testing.T) {
	hp := sarama.NewHashPartitioner("")
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		key := make([]byte, 1+r.IntN(64))
		for j := range key {
			key[j] = byte(r.UintN(256))
		}
		parts := int32(1 + i%97)
		want, err := hp.Partition(&sarama.ProducerMessage{Key: sarama.ByteEncoder(key)}, parts)
		if err != nil {
			t.Fatal(err)
		}
		if got := hashPartition(key, parts); got != want {
			t.Fatalf("key %x over %d partitions: %d, sarama %d", key, parts, got, want)
		}
		// The hash the forwarder takes while encoding, for the Kafka sink.
		a := outArena{hashKeys: true}
		a.add(record.Output{Key: key})
		if m := a.out[0]; !m.hashed || partitionOf(m.keyHash, parts) != want {
			t.Fatalf("key %x over %d partitions: hashed %v, %d, sarama %d", key, parts, m.hashed, partitionOf(m.keyHash, parts), want)
		}
	}
}

// ackLog records the acks of a KafkaSink test.
type ackLog struct {
	mu     sync.Mutex
	ok     map[string]int
	failed map[string]error
}

func newAckLog() *ackLog { return &ackLog{ok: map[string]int{}, failed: map[string]error{}} }

func (a *ackLog) ack(m *Outgoing, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.failed[m.ID] = err
		return
	}
	a.ok[m.ID]++
}

func (a *ackLog) counts() (ok, failed int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ok), len(a.failed)
}

func laneBatch(from, n int, stream string) []*Outgoing {
	batch := make([]*Outgoing, 0, n)
	for i := from; i < from+n; i++ {
		id := fmt.Sprintf("edge1:%d", i)
		batch = append(batch, &Outgoing{Seq: uint64(i), Index: -1, ID: id, Stream: stream,
			Key: fmt.Appendf(nil, "router-%d", i%7), Value: fmt.Appendf(nil, "value %d", i),
			Headers: []Header{{Key: HeaderID, Value: id}}})
	}
	return batch
}

// A connection cut shorter than the retries is absorbed by the lanes: every
// message is acknowledged, none fails, and each key's messages keep their
// order in the topic. A cut longer than the retries fails what was not
// written, and Close still returns, with every message reported, by its
// deadline.
func TestKafkaLanesRetryAcrossCut(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, gate, topic, sink := gatedSink(ctx, t, 20)
	acks := newAckLog()
	const total = 20000
	for i := 0; i < total; i += 500 {
		if err := sink.Write(ctx, laneBatch(i, 500, StreamBMPRaw), acks.ack); err != nil {
			t.Fatal(err)
		}
		if i == total/2 {
			gate.Close()
			time.AfterFunc(time.Second, gate.Open)
		}
	}
	testenv.Eventually(t, 60*time.Second, "every message acknowledged", func() bool {
		ok, failed := acks.counts()
		return ok+failed == total
	})
	if ok, failed := acks.counts(); ok != total || failed != 0 {
		t.Fatalf("%d acknowledged, %d failed (e.g. %v), want all %d acknowledged", ok, failed, firstErr(acks), total)
	}
	// Duplicates included: everything the topic holds.
	n := int(testenv.TopicMessageCount(t, k.Brokers(), topic))
	msgs := testenv.ConsumeAll(t, k.Brokers(), topic, n, 60*time.Second)
	last := map[string]int{}
	seen := map[string]bool{}
	for _, m := range msgs {
		id := headerValue(m.Headers, HeaderID)
		var n int
		if _, err := fmt.Sscanf(id, "edge1:%d", &n); err != nil {
			t.Fatalf("id %q: %v", id, err)
		}
		// A retried request the broker had written is written again: a
		// duplicate, never a gap or a reordering of first appearances.
		if !seen[id] {
			if p, ok := last[string(m.Key)]; ok && n < p {
				t.Fatalf("key %s: message %d after %d", m.Key, n, p)
			}
			last[string(m.Key)] = n
		}
		seen[id] = true
	}
	if len(seen) != total {
		t.Fatalf("%d distinct messages in the topic, want %d", len(seen), total)
	}
	t.Logf("%d messages in the topic for %d sent across a 1 s cut", len(msgs), total)

	// Now a cut that outlasts the retries.
	gate.Close()
	acks2 := newAckLog()
	if err := sink.Write(ctx, laneBatch(total, 100, StreamBMPRaw), acks2.ack); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 120*time.Second, "messages failed once retries ran out", func() bool {
		_, failed := acks2.counts()
		return failed == 100
	})
	closeWithin(ctx, t, sink, 5*time.Second)
}

// gatedSink connects a KafkaSink with retry_max retries (250 ms apart) to a
// private broker behind a gate, writing stream bmp.raw to a new 3-partition
// topic.
func gatedSink(ctx context.Context, t *testing.T, retryMax int) (*testenv.Kafka, *testenv.Gate, string, *KafkaSink) {
	k := testenv.KafkaControlWith(t, testenv.KafkaOptions{Gated: true})
	gate := k.Gate(t)
	cfg := testConfig(t, []string{gate.Addr()})
	cfg.Kafka.RetryMax = retryMax
	cfg.Kafka.RetryBackoff = 250 * time.Millisecond
	topic := testenv.NewTopic(t, k.Brokers(), 3)
	cfg.Topics.Overrides = map[string]string{StreamBMPRaw: topic}
	cfg.Topics.Ensure = []string{StreamBMPRaw}
	sink := NewKafkaSink(cfg.Kafka, cfg.Topics, testLogger(t))
	if err := sink.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	return k, gate, topic, sink
}

// closeWithin closes sink with a deadline d away and fails the test if
// Close outlasts it by more than a second (or by d, for longer deadlines).
func closeWithin(ctx context.Context, t *testing.T, sink *KafkaSink, d time.Duration) {
	t.Helper()
	closeCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	began := time.Now()
	_ = sink.Close(closeCtx)
	if took := time.Since(began); took > d+max(d/5, 2*time.Second) {
		t.Errorf("Close took %v with a %v deadline", took, d)
	}
}

func firstErr(a *ackLog) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, err := range a.failed {
		return err
	}
	return nil
}

// Close with a broker that accepted the requests and answers nothing more
// returns by its deadline with every message reported.
func TestKafkaLanesCloseByDeadline(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, gate, _, sink := gatedSink(ctx, t, 1000)
	gate.Close()
	acks := newAckLog()
	if err := sink.Write(ctx, laneBatch(0, 1000, StreamBMPRaw), acks.ack); err != nil {
		t.Fatal(err)
	}
	closeWithin(ctx, t, sink, 2*time.Second)
	if ok, failed := acks.counts(); ok+failed != 1000 || failed == 0 {
		t.Errorf("after Close: %d acknowledged, %d failed, want all 1000 reported and the unwritten failed", ok, failed)
	}
}
