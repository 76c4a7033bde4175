package forwarder

import (
	"encoding/binary"
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
