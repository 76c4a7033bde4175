package forwarder

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/pierrec/lz4/v4"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// TestLZ4RecordBatch: a batch written with LZ4 carries the LZ4 attribute, a
// CRC over what follows it, and, once decompressed, exactly the records the
// uncompressed batch carries.
func TestLZ4RecordBatch(t *testing.T) {
	var items []laneItem
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 { // several 64 KB blocks
		m := &Outgoing{Key: fmt.Appendf(nil, "key-%d", i%7), Value: fmt.Appendf(nil, `{"route":%d,"as_path":[65000,%d]}`, i, i*31)}
		if i%5 == 0 {
			m.Value = nil // a tombstone
		}
		if i >= 1500 && i < 1600 {
			// Random bytes: blocks that do not shrink, stored as they are.
			m.Value = make([]byte, 2000)
			for j := range m.Value {
				m.Value[j] = byte(rng.Uint32())
			}
		}
		if i == 2500 {
			// A record of several blocks.
			m.Value = bytes.Repeat(fmt.Appendf(nil, `{"route":%d}`, i), 15000)
		}
		m.Headers = []Header{{HeaderID, fmt.Sprintf("edge1:%d:1", i)}}
		items = append(items, laneItem{m: m})
	}
	plain := appendRecordBatch(nil, items, 1700000000000, nil)
	z := newLZ4Batch()
	for round := range 2 { // the second reuses the writer and its buffer
		packed := appendRecordBatch([]byte("prefix"), items, 1700000000000, z)
		if !bytes.HasPrefix(packed, []byte("prefix")) {
			t.Fatal("what was in the buffer before the batch changed")
		}
		packed = packed[len("prefix"):]
		ph, pr := splitBatch(t, plain)
		zh, zr := splitBatch(t, packed)
		if got := binary.BigEndian.Uint16(zh[25:]); got != uint16(sarama.CompressionLZ4) {
			t.Fatalf("round %d: attributes %#x, want LZ4", round, got)
		}
		if random := 100 * 2000; len(zr) >= random+(len(pr)-random)/2 { // the rest shrinks to less than half
			t.Errorf("round %d: %d bytes compressed from %d", round, len(zr), len(pr))
		}
		if !storedBlock(t, zr) {
			t.Errorf("round %d: no block stored uncompressed", round)
		}
		raw, err := io.ReadAll(lz4.NewReader(bytes.NewReader(zr)))
		if err != nil {
			t.Fatalf("round %d: decompress: %v", round, err)
		}
		if !bytes.Equal(raw, pr) {
			t.Fatalf("round %d: decompressed records differ from the uncompressed batch's", round)
		}
		// Headers agree but for the attributes, the CRC and the length.
		zh2, ph2 := slices.Clone(zh), slices.Clone(ph)
		for _, h := range [][]byte{zh2, ph2} {
			clear(h[0:4])   // records field length
			clear(h[12:16]) // batch length
			clear(h[21:27]) // crc, attributes
		}
		if !bytes.Equal(zh2, ph2) {
			t.Fatalf("round %d: batch headers differ:\n%x\n%x", round, zh2, ph2)
		}
	}
}

// storedBlock walks an LZ4 frame of the header lz4Batch writes and
// reports whether a block is stored uncompressed.
func storedBlock(t *testing.T, f []byte) (stored bool) {
	t.Helper()
	f = f[len(lz4FrameHeader):]
	for {
		if len(f) < 4 {
			t.Fatal("LZ4 frame cut short")
		}
		n := binary.LittleEndian.Uint32(f)
		f = f[4:]
		if n == 0 {
			if len(f) != 0 {
				t.Fatalf("%d bytes after the end mark", len(f))
			}
			return stored
		}
		stored = stored || n&(1<<31) != 0
		f = f[n&^(1<<31):]
	}
}

// splitBatch checks a records field's lengths and CRC and returns the
// batch header (from the field's length to the record count) and the
// records.
func splitBatch(t *testing.T, b []byte) (head, records []byte) {
	t.Helper()
	const headLen = 4 + 8 + 4 + 4 + 1 + 4 + 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4
	if len(b) < headLen {
		t.Fatalf("batch of %d bytes", len(b))
	}
	if n := binary.BigEndian.Uint32(b); int(n) != len(b)-4 {
		t.Fatalf("records field length %d, want %d", n, len(b)-4)
	}
	if n := binary.BigEndian.Uint32(b[12:]); int(n) != len(b)-16 {
		t.Fatalf("batch length %d, want %d", n, len(b)-16)
	}
	if crc := binary.BigEndian.Uint32(b[21:]); crc != crc32.Checksum(b[25:], castagnoli) {
		t.Fatal("batch CRC does not match")
	}
	return b[:headLen], b[headLen:]
}

// TestCompactedCompression: against the real broker, the compacted topic's
// batches are written with kafka.compacted_compression and every other
// topic's with kafka.compression, through the lanes' own encoding where it
// can (none, LZ4) and sarama's otherwise; consumers read the same values
// either way.
func TestCompactedCompression(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	for _, tc := range []struct {
		compression, compacted string
		wantRoute, wantRIB     sarama.CompressionCodec
		wire                   bool
	}{
		{"none", "lz4", sarama.CompressionNone, sarama.CompressionLZ4, true}, // the shipped defaults
		{"lz4", "", sarama.CompressionLZ4, sarama.CompressionLZ4, true},
		{"none", "none", sarama.CompressionNone, sarama.CompressionNone, true},
		{"zstd", "lz4", sarama.CompressionZSTD, sarama.CompressionLZ4, false},
		{"lz4", "gzip", sarama.CompressionLZ4, sarama.CompressionGZIP, false},
	} {
		t.Run(tc.compression+"-"+tc.compacted, func(t *testing.T) {
			cfg := testConfig(t, brokers)
			cfg.Kafka.Compression, cfg.Kafka.CompactedCompression = tc.compression, tc.compacted
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			cfg.Topics.Streams = append(slices.Clone(testStreams), record.Stream{Name: StreamRIB, Format: record.FormatJSON, Compact: true})
			deleteTopicsAtEnd(t, brokers, cfg, StreamRIB, StreamBMPRaw, StreamDLQ)
			k := NewKafkaSink(cfg.Kafka, cfg.Topics, testLogger(t))
			if err := k.Connect(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer k.Close(context.Background())
			if got := k.lanes[0].cfg.wire; got != tc.wire {
				t.Errorf("lanes' own encoding %v, want %v", got, tc.wire)
			}
			want := map[string][]byte{} // id → value
			var batch []*Outgoing
			for i := range 2000 {
				for _, stream := range []string{StreamRIB, StreamBMPRaw} {
					id := fmt.Sprintf("edge1:%d:%s", i, stream)
					v := fmt.Appendf(nil, `{"prefix":"10.%d.%d.0/24","as_path":[65000,%d]}`, i/256, i%256, i)
					want[id] = v
					batch = append(batch, &Outgoing{ID: id, Stream: stream, Key: fmt.Appendf(nil, "route-%d", i), Value: v,
						Headers: []Header{{HeaderID, id}}})
				}
			}
			writeAcked(t, k, batch)

			for stream, codec := range map[string]sarama.CompressionCodec{StreamRIB: tc.wantRIB, StreamBMPRaw: tc.wantRoute} {
				topic := cfg.Topics.Topic(stream)
				n := testenv.ConsumeEach(t, brokers, topic, time.Minute, func(m *sarama.ConsumerMessage) {
					id := headerValue(m.Headers, HeaderID)
					if !bytes.Equal(m.Value, want[id]) {
						t.Errorf("%s: %s = %q, want %q", topic, id, m.Value, want[id])
					}
				})
				if n != 2000 {
					t.Errorf("%s: %d messages, want 2000", topic, n)
				}
				if got := batchCodecs(t, brokers, topic, cfg.Kafka.Partitions); len(got) != 1 || got[0] != codec {
					t.Errorf("%s: batches compressed %v, want only %v", topic, got, codec)
				}
			}
		})
	}
}

// batchCodecs fetches every partition of topic from its start and returns
// the compression codecs its record batches use.
func batchCodecs(t *testing.T, brokers []string, topic string, partitions int32) []sarama.CompressionCodec {
	t.Helper()
	sc := testenv.SaramaConfig(t)
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	seen := map[sarama.CompressionCodec]bool{}
	for p := range partitions {
		leader, err := client.Leader(topic, p)
		if err != nil {
			t.Fatal(err)
		}
		req := &sarama.FetchRequest{Version: 11, MaxBytes: 16 << 20, MaxWaitTime: 100, Isolation: sarama.ReadUncommitted}
		req.AddBlock(topic, p, 0, 16<<20, -1)
		resp, err := leader.Fetch(req)
		if err != nil {
			t.Fatal(err)
		}
		blk := resp.GetBlock(topic, p)
		if blk == nil || blk.Err != sarama.ErrNoError {
			t.Fatalf("fetch %s/%d: %+v", topic, p, blk)
		}
		for _, r := range blk.RecordsSet {
			if r.RecordBatch != nil {
				seen[r.RecordBatch.Codec] = true
			}
		}
	}
	var out []sarama.CompressionCodec
	for c := range seen {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}
