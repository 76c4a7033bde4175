package forwarder

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"github.com/IBM/sarama"
)

type answerPart struct {
	topic     string
	partition int32
	code      int16
}

// appendProduceAnswer encodes a produce response body (after the
// correlation id) of version v, as a broker sends it.
func appendProduceAnswer(b []byte, v int16, parts []answerPart, recordErrors int) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(parts))) // one topic per part
	for _, p := range parts {
		b = appendString(b, p.topic)
		b = binary.BigEndian.AppendUint32(b, 1)
		b = binary.BigEndian.AppendUint32(b, uint32(p.partition))
		b = binary.BigEndian.AppendUint16(b, uint16(p.code))
		b = binary.BigEndian.AppendUint64(b, 42)                 // base offset
		b = binary.BigEndian.AppendUint64(b, 0xffffffffffffffff) // log append time
		if v >= 5 {
			b = binary.BigEndian.AppendUint64(b, 0)
		}
		if v >= 8 {
			b = binary.BigEndian.AppendUint32(b, uint32(recordErrors))
			for i := range recordErrors {
				b = binary.BigEndian.AppendUint32(b, uint32(i))
				b = appendString(b, "bad record")
			}
			b = binary.BigEndian.AppendUint16(b, 0xffff) // error message: null
		}
	}
	return binary.BigEndian.AppendUint32(b, 0) // throttle time
}

func TestParseProduceAnswer(t *testing.T) {
	parts := []answerPart{
		{"bgpedge.bmp.raw", 0, 0},
		{"bgpedge.bmp.raw", 5, int16(sarama.ErrNotLeaderForPartition)},
		{"bgpedge.bmp.route.loc-rib", 2, int16(sarama.ErrMessageSizeTooLarge)},
	}
	for _, v := range []int16{3, 5, 7, 8} {
		body := appendProduceAnswer(nil, v, parts, 2)
		r, err := parseProduceAnswer(body, v)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		for _, p := range parts {
			b := r.GetBlock(p.topic, p.partition)
			if b == nil || b.Err != sarama.KError(p.code) {
				t.Errorf("v%d %s/%d: block %+v, want error %d", v, p.topic, p.partition, b, p.code)
			}
		}
		// Every truncation is an error, never a panic or a partial answer
		// taken for whole.
		for n := range len(body) - 4 {
			if _, err := parseProduceAnswer(body[:n], v); err == nil && n < len(body)-4 {
				t.Fatalf("v%d: %d of %d bytes parsed without error", v, n, len(body))
			}
		}
	}
}

func TestVarintLen(t *testing.T) {
	var buf [binary.MaxVarintLen64]byte
	for _, x := range []int64{0, 1, -1, 63, 64, -64, -65, 127, 128, 8191, 8192, 1 << 20, -(1 << 20), math.MaxInt32, math.MinInt32, math.MaxInt64, math.MinInt64} {
		if got, want := varintLen(x), binary.PutVarint(buf[:], x); got != want {
			t.Errorf("varintLen(%d) = %d, want %d", x, got, want)
		}
	}
}

// FuzzProduceAnswer feeds the produce answer parser whatever a broker, or
// something posing as one, might send: it must return an error or an
// answer, never panic, and take a well-formed answer as such.
func FuzzProduceAnswer(f *testing.F) {
	for _, v := range []int16{3, 5, 8} {
		f.Add(appendProduceAnswer(nil, v, []answerPart{{"t", 0, 0}, {"u", 3, 6}}, 1), v)
	}
	f.Add([]byte{0, 0, 0, 1, 0xff, 0xff}, int16(8))
	f.Fuzz(func(t *testing.T, b []byte, v int16) {
		if v < 3 || v > 8 {
			v = 3 + v&3
		}
		r, err := parseProduceAnswer(b, v)
		if err == nil && r == nil {
			t.Fatal("no answer and no error")
		}
	})
}

// TestRecordBatchSpliced: a record batch whose large values are left out of
// the buffer and written beside it is, put back together, byte for byte
// the batch with every value copied in (lengths and CRC included).
func TestRecordBatchSpliced(t *testing.T) {
	var items []laneItem
	for i, size := range []int{0, 10, spliceMin - 1, spliceMin, 500, 3000, 40, 700} {
		m := &Outgoing{Key: []byte(fmt.Sprintf("key-%d", i)), Value: bytes.Repeat([]byte{byte('a' + i)}, size),
			Headers: []Header{{HeaderID, fmt.Sprintf("edge:%d", i)}, {HeaderStream, "bmp.route.loc-rib"}}}
		if size == 0 {
			m.Value = nil // a tombstone
		}
		items = append(items, laneItem{m: m})
	}
	prefix := []byte("request header")
	want := appendRecordBatch(bytes.Clone(prefix), items, 1700000000000, nil)
	for _, split := range []int{len(items), 3} { // one batch, or two in one request
		var vals []splicedValue
		b := appendRecordBatch(bytes.Clone(prefix), items[:split], 1700000000000, &vals)
		wantHere := want
		if split < len(items) {
			b = appendRecordBatch(b, items[split:], 1700000000000, &vals)
			wantHere = appendRecordBatch(bytes.Clone(prefix), items[:split], 1700000000000, nil)
			wantHere = appendRecordBatch(wantHere, items[split:], 1700000000000, nil)
		}
		if len(vals) == 0 {
			t.Fatal("no value was spliced")
		}
		got := bytes.Join(splicePieces(nil, b, vals), nil)
		if !bytes.Equal(got, wantHere) {
			at := 0
			for at < min(len(got), len(wantHere)) && got[at] == wantHere[at] {
				at++
			}
			t.Fatalf("split %d: spliced batch (%d bytes) differs from the copied one (%d bytes) at byte %d", split, len(got), len(wantHere), at)
		}
		if len(b)+splicedLen(vals) != len(wantHere) {
			t.Fatalf("split %d: %d bytes in the buffer and %d spliced, want %d in all", split, len(b), splicedLen(vals), len(wantHere))
		}
	}
}
