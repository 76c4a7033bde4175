package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/bgpedge/bgpedge/record"
)

// On-disk block format. One bbolt value per group commit holds one or more
// chunks (one per Append call coalesced into the commit); the bbolt key is the
// first seq of the block, big-endian, and records within a block have
// consecutive seqs, so seqs themselves are not stored.
//
//	chunk  = bodyLen u32 | count u32 | crc u32 | body
//	         crc is CRC-32C over the count field and the body
//	body   = record*
//	record = kind u8 | time i64 (unix ns; math.MinInt64 for the zero time)
//	         | uvarint len | key | uvarint len | source | uvarint len | payload
//
// All integers are big-endian. Chunks are encoded by the appender's goroutine
// (CRC included), so the single writer goroutine only concatenates them.
const (
	chunkHeaderLen = 12
	// maxChunkBody bounds one Append call; bbolt values must stay below 2 GiB.
	maxChunkBody = 1 << 30
	zeroTime     = math.MinInt64
)

// ErrCorrupt is wrapped by every error about bytes read back from disk that do
// not decode (bad CRC, bad lengths, truncated blocks).
var ErrCorrupt = errors.New("corrupt block")

func castagnoli() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) }

// appendChunk encodes recs as one chunk appended to dst.
func appendChunk(dst []byte, recs []record.Record) ([]byte, error) {
	size := 0
	for i := range recs {
		r := &recs[i]
		size += 1 + 8 + uvarintLen(len(r.Key)) + len(r.Key) + uvarintLen(len(r.Source)) + len(r.Source) +
			uvarintLen(len(r.Payload)) + len(r.Payload)
	}
	if size > maxChunkBody {
		return dst, fmt.Errorf("append of %d bytes: %w", size, ErrTooLarge)
	}
	start := len(dst)
	if cap(dst)-start < chunkHeaderLen+size {
		grown := make([]byte, start, start+chunkHeaderLen+size)
		copy(grown, dst)
		dst = grown
	}
	dst = dst[:start+chunkHeaderLen]
	for i := range recs {
		r := &recs[i]
		dst = append(dst, byte(r.Kind))
		t := int64(zeroTime)
		if !r.Time.IsZero() {
			t = r.Time.UnixNano()
		}
		dst = binary.BigEndian.AppendUint64(dst, uint64(t))
		dst = binary.AppendUvarint(dst, uint64(len(r.Key)))
		dst = append(dst, r.Key...)
		dst = binary.AppendUvarint(dst, uint64(len(r.Source)))
		dst = append(dst, r.Source...)
		dst = binary.AppendUvarint(dst, uint64(len(r.Payload)))
		dst = append(dst, r.Payload...)
	}
	hdr := dst[start : start+chunkHeaderLen]
	binary.BigEndian.PutUint32(hdr[0:4], uint32(size))
	binary.BigEndian.PutUint32(hdr[4:8], uint32(len(recs)))
	tab := castagnoli()
	crc := crc32.Update(crc32.Update(0, tab, hdr[4:8]), tab, dst[start+chunkHeaderLen:])
	binary.BigEndian.PutUint32(hdr[8:12], crc)
	return dst, nil
}

func uvarintLen(n int) int {
	l := 1
	for n >= 0x80 {
		n >>= 7
		l++
	}
	return l
}

// verifyBlock checks every chunk's framing and CRC and returns the number of
// records in the block, without decoding them.
func verifyBlock(b []byte) (int, error) {
	tab := castagnoli()
	total := 0
	for off := 0; off < len(b); {
		_, count, next, err := chunkAt(b, off, tab)
		if err != nil {
			return 0, err
		}
		total += count
		off = next
	}
	if total == 0 {
		return 0, fmt.Errorf("empty block: %w", ErrCorrupt)
	}
	return total, nil
}

func chunkAt(b []byte, off int, tab *crc32.Table) (body []byte, count, next int, err error) {
	if len(b)-off < chunkHeaderLen {
		return nil, 0, 0, fmt.Errorf("truncated chunk header at %d: %w", off, ErrCorrupt)
	}
	hdr := b[off : off+chunkHeaderLen]
	n := int(binary.BigEndian.Uint32(hdr[0:4]))
	count = int(binary.BigEndian.Uint32(hdr[4:8]))
	if n > len(b)-off-chunkHeaderLen {
		return nil, 0, 0, fmt.Errorf("chunk at %d claims %d bytes: %w", off, n, ErrCorrupt)
	}
	// Every record takes at least 12 bytes, which bounds count before any
	// allocation is sized from it.
	if count == 0 || count > n/12 {
		return nil, 0, 0, fmt.Errorf("chunk at %d claims %d records in %d bytes: %w", off, count, n, ErrCorrupt)
	}
	body = b[off+chunkHeaderLen : off+chunkHeaderLen+n]
	if crc32.Update(crc32.Update(0, tab, hdr[4:8]), tab, body) != binary.BigEndian.Uint32(hdr[8:12]) {
		return nil, 0, 0, fmt.Errorf("chunk at %d: crc mismatch: %w", off, ErrCorrupt)
	}
	return body, count, off + chunkHeaderLen + n, nil
}

// decodeBlock appends the records of block b, whose first seq is first, to
// dst. The records' Key and Payload alias b, so b must not be reused.
func decodeBlock(b []byte, first uint64, dst []record.Record) ([]record.Record, error) {
	tab := castagnoli()
	seq := first
	lastSource := ""
	start := len(dst)
	// Room for all of the block's records at once: grown chunk by chunk,
	// the slice was allocated (and copied) once per chunk.
	dst = growRecords(dst, countRecords(b))
	for off := 0; off < len(b); {
		body, count, next, err := chunkAt(b, off, tab)
		if err != nil {
			return dst[:start], err
		}
		dst = growRecords(dst, count)
		for i := 0; i < count; i++ {
			var r record.Record
			if len(body) < 9 {
				return dst[:start], fmt.Errorf("truncated record %d: %w", seq, ErrCorrupt)
			}
			r.Seq = seq
			r.Kind = record.Kind(body[0])
			if t := int64(binary.BigEndian.Uint64(body[1:9])); t != zeroTime {
				r.Time = time.Unix(0, t)
			}
			body = body[9:]
			var key, src, payload []byte
			if key, body, err = lengthPrefixed(body); err != nil {
				return dst[:start], fmt.Errorf("record %d key: %w", seq, err)
			}
			if src, body, err = lengthPrefixed(body); err != nil {
				return dst[:start], fmt.Errorf("record %d source: %w", seq, err)
			}
			if payload, body, err = lengthPrefixed(body); err != nil {
				return dst[:start], fmt.Errorf("record %d payload: %w", seq, err)
			}
			if len(key) > 0 {
				r.Key = key
			}
			if len(payload) > 0 {
				r.Payload = payload
			}
			// Consecutive records nearly always share a source; comparing
			// avoids one string allocation per record.
			if string(src) != lastSource {
				lastSource = string(src)
			}
			r.Source = lastSource
			dst = append(dst, r)
			seq++
		}
		if len(body) != 0 {
			return dst[:start], fmt.Errorf("chunk at %d has %d trailing bytes: %w", off, len(body), ErrCorrupt)
		}
		off = next
	}
	if len(dst) == start {
		return dst, fmt.Errorf("empty block: %w", ErrCorrupt)
	}
	return dst, nil
}

// timeInBlock is the receive time of record seq in block b, whose first
// seq is first, read in place: chunks before it are skipped by their
// headers (their CRC checked, as a Read would), records before it within
// its chunk by their lengths. found is false when the block does not hold
// seq.
func timeInBlock(b []byte, first, seq uint64) (t time.Time, found bool, err error) {
	if seq < first {
		return time.Time{}, false, nil
	}
	tab := castagnoli()
	at := first
	for off := 0; off < len(b); {
		body, count, next, err := chunkAt(b, off, tab)
		if err != nil {
			return time.Time{}, false, err
		}
		if seq >= at+uint64(count) {
			at += uint64(count)
			off = next
			continue
		}
		for ; ; at++ {
			if len(body) < 9 {
				return time.Time{}, false, fmt.Errorf("truncated record %d: %w", at, ErrCorrupt)
			}
			if at == seq {
				if ns := int64(binary.BigEndian.Uint64(body[1:9])); ns != zeroTime {
					t = time.Unix(0, ns)
				}
				return t, true, nil
			}
			body = body[9:]
			for range 3 { // key, source, payload
				if _, body, err = lengthPrefixed(body); err != nil {
					return time.Time{}, false, fmt.Errorf("record %d: %w", at, err)
				}
			}
		}
	}
	return time.Time{}, false, nil
}

// countRecords adds up the record counts of b's chunk headers, as far as
// they are plausible (chunkAt checks them, and the CRCs, when decoding).
func countRecords(b []byte) int {
	total := 0
	for off := 0; len(b)-off >= chunkHeaderLen; {
		n := int(binary.BigEndian.Uint32(b[off : off+4]))
		count := int(binary.BigEndian.Uint32(b[off+4 : off+8]))
		if n > len(b)-off-chunkHeaderLen || count == 0 || count > n/12 {
			break
		}
		total += count
		off += chunkHeaderLen + n
	}
	return total
}

func growRecords(dst []record.Record, n int) []record.Record {
	if cap(dst)-len(dst) >= n {
		return dst
	}
	grown := make([]record.Record, len(dst), len(dst)+n)
	copy(grown, dst)
	return grown
}

func lengthPrefixed(b []byte) (field, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, nil, fmt.Errorf("bad length: %w", ErrCorrupt)
	}
	if n > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("length %d beyond block: %w", n, ErrCorrupt)
	}
	return b[k : k+int(n) : k+int(n)], b[k+int(n):], nil
}
