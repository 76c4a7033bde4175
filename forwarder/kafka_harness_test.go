package forwarder

import (
	"bytes"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestKafkaHarness proves the test broker from scripts/kafka.sh is real and
// behaves as the forwarder relies on: an idempotent producer with acks=all
// gets every message stored exactly once, with key, value and headers intact,
// and messages of one key stay in one partition in the order they were sent.
func TestKafkaHarness(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)

	tests := []struct {
		name        string
		compression sarama.CompressionCodec
		partitions  int32
		keys        int
		messages    int
	}{
		{name: "none", compression: sarama.CompressionNone, partitions: 4, keys: 16, messages: 2000},
		{name: "zstd", compression: sarama.CompressionZSTD, partitions: 3, keys: 7, messages: 1000},
		{name: "lz4", compression: sarama.CompressionLZ4, partitions: 1, keys: 3, messages: 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topic := testenv.NewTopic(t, brokers, tc.partitions)

			cfg := testenv.SaramaConfig(t)
			cfg.Producer.RequiredAcks = sarama.WaitForAll
			cfg.Producer.Idempotent = true
			cfg.Net.MaxOpenRequests = 1
			cfg.Producer.Return.Successes = true
			cfg.Producer.Return.Errors = true
			cfg.Producer.Retry.Max = 10
			cfg.Producer.Compression = tc.compression
			cfg.Producer.Partitioner = sarama.NewHashPartitioner
			producer, err := sarama.NewAsyncProducer(brokers, cfg)
			if err != nil {
				t.Fatalf("producer: %v", err)
			}
			defer producer.Close()

			type sent struct {
				key, value []byte
				seq        int
			}
			want := make(map[string]sent, tc.messages) // by id header
			msgs := make([]*sarama.ProducerMessage, tc.messages)
			for i := range msgs {
				key := fmt.Sprintf("router-%d", i%tc.keys)
				id := "agent-1:" + strconv.Itoa(i)
				value := bytes.Repeat([]byte(id+";"), 1+i%13)
				want[id] = sent{key: []byte(key), value: value, seq: i}
				msgs[i] = &sarama.ProducerMessage{
					Topic: topic,
					Key:   sarama.StringEncoder(key),
					Value: sarama.ByteEncoder(value),
					Headers: []sarama.RecordHeader{
						{Key: []byte("bgpedge-id"), Value: []byte(id)},
						{Key: []byte("bgpedge-seq"), Value: []byte(strconv.Itoa(i))},
					},
					Metadata: i,
				}
			}
			done := make(chan struct{})
			defer close(done)
			go func() {
				for _, m := range msgs {
					select {
					case producer.Input() <- m:
					case <-done:
						return
					}
				}
			}()

			acked := make(map[int]bool, tc.messages)
			keyPartition := make(map[string]int32)
			timeout := time.After(60 * time.Second)
			for len(acked) < tc.messages {
				select {
				case m := <-producer.Successes():
					i := m.Metadata.(int)
					if acked[i] {
						t.Fatalf("message %d acknowledged twice", i)
					}
					acked[i] = true
					k := string(want["agent-1:"+strconv.Itoa(i)].key)
					if p, ok := keyPartition[k]; ok && p != m.Partition {
						t.Fatalf("key %s produced to partitions %d and %d", k, p, m.Partition)
					}
					keyPartition[k] = m.Partition
				case perr := <-producer.Errors():
					t.Fatalf("produce message %v: %v", perr.Msg.Metadata, perr.Err)
				case <-timeout:
					t.Fatalf("only %d of %d messages acknowledged within 60s", len(acked), tc.messages)
				}
			}

			got := testenv.ConsumeAll(t, brokers, topic, tc.messages, 60*time.Second)
			seen := make(map[string]bool, len(got))
			lastSeq := make(map[string]int)
			for _, m := range got {
				var id, seqHdr string
				for _, h := range m.Headers {
					switch string(h.Key) {
					case "bgpedge-id":
						id = string(h.Value)
					case "bgpedge-seq":
						seqHdr = string(h.Value)
					}
				}
				w, ok := want[id]
				if !ok {
					t.Fatalf("unexpected message at %d/%d with id %q", m.Partition, m.Offset, id)
				}
				if seen[id] {
					t.Fatalf("message %s delivered twice (second at %d/%d)", id, m.Partition, m.Offset)
				}
				seen[id] = true
				if !bytes.Equal(m.Key, w.key) || !bytes.Equal(m.Value, w.value) || seqHdr != strconv.Itoa(w.seq) {
					t.Fatalf("message %s: got key %q value %q seq %q, want key %q value %q seq %d",
						id, m.Key, m.Value, seqHdr, w.key, w.value, w.seq)
				}
				if p := keyPartition[string(m.Key)]; p != m.Partition {
					t.Fatalf("message %s of key %s read from partition %d, acknowledged in %d", id, m.Key, m.Partition, p)
				}
				if last, ok := lastSeq[string(m.Key)]; ok && w.seq <= last {
					t.Fatalf("key %s out of order: seq %d after %d", m.Key, w.seq, last)
				}
				lastSeq[string(m.Key)] = w.seq
			}
			if len(seen) != tc.messages {
				t.Fatalf("consumed %d distinct messages, want %d", len(seen), tc.messages)
			}
			if n := testenv.TopicMessageCount(t, brokers, topic); n != int64(tc.messages) {
				t.Fatalf("topic holds %d messages, want exactly %d", n, tc.messages)
			}
		})
	}
}
