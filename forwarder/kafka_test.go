package forwarder

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// A poison record goes to the dead-letter topic with its raw bytes and the
// error, and the records after it still arrive (acceptance 5).
func TestKafkaDeadLetterAndLaterRecords(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	cfg := testConfig(t, brokers)
	deleteTopicsAtEnd(t, brokers, cfg, StreamBMPRaw, StreamDLQ)
	src := newMemSource()
	f, err := New(cfg, src, rawBMP, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	const before, after = 100, 100
	for range before {
		src.Append(bmpRecord("192.0.2.1", 200))
	}
	poison := []byte("not a BMP message, and a kind nobody encodes")
	poisonSeq := src.Append(record.Record{Kind: record.Kind(99), Key: []byte("192.0.2.9"), Source: "192.0.2.9", Payload: poison})
	for range after {
		src.Append(bmpRecord("192.0.2.2", 200))
	}
	startForwarder(t, f)
	testenv.Eventually(t, 60*time.Second, "spool acked through the last record", func() bool { return src.Acked() == src.Len() })

	dlq := testenv.ConsumeAll(t, brokers, cfg.Topics.Topic(StreamDLQ), 1, 30*time.Second)
	m := dlq[0]
	if string(m.Value) != string(poison) {
		t.Errorf("dead letter value = %q, want the raw payload", m.Value)
	}
	if id := headerValue(m.Headers, HeaderID); id != MessageID("edge1", poisonSeq, -1) {
		t.Errorf("dead letter id = %q", id)
	}
	if e := headerValue(m.Headers, HeaderError); !strings.Contains(e, ErrUnknownKind.Error()) {
		t.Errorf("dead letter error header = %q, want the encoder's error", e)
	}
	if k := headerValue(m.Headers, HeaderKind); k != "unknown-99" {
		t.Errorf("dead letter kind header = %q", k)
	}

	var o idOracle
	o.keep = true
	consumeInto(t, brokers, &o, cfg.Topics.Topic(StreamBMPRaw))
	testenv.Eventually(t, 30*time.Second, "every record in the raw topic", func() bool { return o.distinct() == before+after })
	if miss := o.missingSeqs(src.Len()); len(miss) != 1 || miss[0] != poisonSeq {
		t.Errorf("seqs missing from bmp.raw = %v, want only the poison %d", miss, poisonSeq)
	}
	// Keys and headers as specified: raw BMP keyed by router.
	for _, m := range o.msgs[cfg.Topics.Topic(StreamBMPRaw)][:5] {
		if string(m.Key) != headerValue(m.Headers, HeaderRouter) || headerValue(m.Headers, HeaderAgent) != "edge1" ||
			headerValue(m.Headers, HeaderKind) != "bmp" || headerValue(m.Headers, HeaderStream) != StreamBMPRaw {
			t.Errorf("message %s/%d@%d: key %q headers %v", m.Topic, m.Partition, m.Offset, m.Key, m.Headers)
		}
	}
}

// With topic creation off, connecting fails and names the missing topic.
func TestKafkaMissingTopicNamed(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	cfg := testConfig(t, brokers)
	cfg.Kafka.CreateTopics = false
	sink := NewKafkaSink(cfg.Kafka, cfg.Topics, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := sink.Connect(ctx)
	if !errors.Is(err, ErrMissingTopic) {
		_ = sink.Close(ctx)
		t.Fatalf("connect = %v, want ErrMissingTopic", err)
	}
	if want := cfg.Topics.Topic(StreamBMPRaw); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name topic %s", err, want)
	}
}

// Every compression codec round-trips through the real broker.
func TestKafkaCompression(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	for _, codec := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			cfg := testConfig(t, brokers)
			cfg.Kafka.Compression = codec
			cfg.Topics.Ensure = []string{StreamBMPRaw}
			deleteTopicsAtEnd(t, brokers, cfg, StreamBMPRaw)
			src := newMemSource()
			for range 50 {
				src.Append(bmpRecord("192.0.2.1", 300))
			}
			f, err := New(cfg, src, rawBMP, testLogger(t), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			stop := startForwarder(t, f)
			testenv.Eventually(t, 60*time.Second, "acked", func() bool { return src.Acked() == 50 })
			stop()
			msgs := testenv.ConsumeAll(t, brokers, cfg.Topics.Topic(StreamBMPRaw), 50, 30*time.Second)
			for _, m := range msgs {
				if len(m.Value) != 300 || m.Value[0] != 3 {
					t.Fatalf("message %d bytes, first byte %d", len(m.Value), m.Value[0])
				}
			}
		})
	}
}

// With several producers each key still lands in the partition sarama's
// default hash gives it, each partition is written by one producer, and a
// key's records arrive in spool order: per-key order holds.
func TestKafkaProducersKeepKeyOrder(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	for _, producers := range []int{1, 3} {
		t.Run(strconv.Itoa(producers), func(t *testing.T) {
			cfg := testConfig(t, brokers)
			cfg.Kafka.Partitions = 6
			cfg.Kafka.Producers = producers
			cfg.Topics.Ensure = []string{StreamBMPRaw}
			deleteTopicsAtEnd(t, brokers, cfg, StreamBMPRaw)
			const n = 3000
			src := newMemSource()
			for i := range n {
				src.Append(bmpRecord("192.0.2."+strconv.Itoa(1+i%37), 120))
			}
			f, err := New(cfg, src, rawBMP, testLogger(t), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			stop := startForwarder(t, f)
			testenv.Eventually(t, 60*time.Second, "every record acked", func() bool { return src.Acked() == n })
			stop()

			// Everything up to the high-water marks: a session retry may
			// legitimately resend (at least once); order is checked on the
			// first copy of each record.
			var msgs []*sarama.ConsumerMessage
			testenv.ConsumeEach(t, brokers, cfg.Topics.Topic(StreamBMPRaw), 30*time.Second, func(m *sarama.ConsumerMessage) {
				msgs = append(msgs, m)
			})
			hash := sarama.NewHashPartitioner("")
			lastSeq := map[string]uint64{}
			seen := map[uint64]bool{}
			partitionsUsed := map[int32]bool{}
			dups := 0
			sort.Slice(msgs, func(i, j int) bool {
				if msgs[i].Partition != msgs[j].Partition {
					return msgs[i].Partition < msgs[j].Partition
				}
				return msgs[i].Offset < msgs[j].Offset
			})
			for _, m := range msgs {
				want, err := hash.Partition(&sarama.ProducerMessage{Key: sarama.ByteEncoder(m.Key)}, cfg.Kafka.Partitions)
				if err != nil {
					t.Fatal(err)
				}
				if m.Partition != want {
					t.Fatalf("key %s in partition %d, want %d (the default hash)", m.Key, m.Partition, want)
				}
				partitionsUsed[m.Partition] = true
				_, seq, _, err := ParseMessageID(headerValue(m.Headers, HeaderID))
				if err != nil {
					t.Fatal(err)
				}
				if seen[seq] {
					dups++
					continue
				}
				if seq <= lastSeq[string(m.Key)] {
					t.Fatalf("key %s: seq %d after %d in partition %d", m.Key, seq, lastSeq[string(m.Key)], m.Partition)
				}
				lastSeq[string(m.Key)] = seq
				seen[seq] = true
			}
			t.Logf("%d producers: %d records, %d duplicates, partitions %v", producers, len(seen), dups, partitionsUsed)
			if len(seen) != n {
				t.Errorf("%d distinct records in Kafka, want %d", len(seen), n)
			}
			if len(partitionsUsed) < 2 {
				t.Errorf("only partitions %v used: the keys should spread", partitionsUsed)
			}
		})
	}
}
