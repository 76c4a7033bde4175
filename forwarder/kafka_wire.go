package forwarder

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"net"
	"runtime"
	"slices"
	"time"

	"github.com/IBM/sarama"
	"github.com/pierrec/lz4/v4"
)

// wireConn is a lane's own produce connection to one broker, used where
// the records go uncompressed or LZ4-compressed and without SASL (the
// shipped defaults; TLS is fine): each request is encoded once, straight
// from the messages into a buffer the connection reuses, and written.
// sarama's encoder copies every record twice, into a records buffer and
// then into the request, and allocates both per request, which was most of
// what a Kafka message still cost once the lanes had replaced sarama's
// producer (docs/BENCHMARKS.md). Metadata, leaders, topics and the other settings
// keep going through sarama.
//
// One request is in flight at a time (the lane waits for its answer before
// sending the next to the same broker), so answers are read in order by
// one goroutine per connection.
type wireConn struct {
	conn     net.Conn
	clientID string
	version  int16
	readTO   time.Duration
	writeTO  time.Duration

	used time.Time // when the last request was written
	buf  []byte    // the request being encoded (reused)
	// codecOf says how each topic's batches are compressed (none or LZ4);
	// z compresses them, made on first use.
	codecOf func(topic string) sarama.CompressionCodec
	z       *lz4Batch
	corr    int32
	expect  chan wireExpect
	done    chan struct{} // closed when the reader has returned
	closed  bool          // by the lane
}

type wireExpect struct {
	corr  int32
	parts []sentPart // their topics and partitions, for the answer
	cb    func(*sarama.ProduceResponse, error)
}

// wireIdle is how long a lane's own connection may stay unused before it
// is dialled again rather than written to: half the brokers' default
// connections.max.idle.ms.
const wireIdle = 5 * time.Minute

// wireVersion is the produce request version a wireConn speaks: the
// version sarama would use, at most 8, the last before the protocol's
// flexible encoding (all of 3 to 8 share one request layout).
func wireVersion(v int16) int16 { return min(v, 8) }

// dialWire connects to a broker.
func dialWire(ctx context.Context, addr string, cfg laneConfig) (*wireConn, error) {
	d := net.Dialer{Timeout: cfg.dialTimeout, KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if cfg.tls != nil {
		tc := cfg.tls.Clone()
		if tc.ServerName == "" && !tc.InsecureSkipVerify {
			host, _, _ := net.SplitHostPort(addr)
			tc.ServerName = host
		}
		t := tls.Client(conn, tc)
		hctx, cancel := context.WithTimeout(ctx, cfg.dialTimeout)
		err := t.HandshakeContext(hctx)
		cancel()
		if err != nil {
			_ = conn.Close()
			return nil, err
		}
		conn = t
	}
	c := &wireConn{
		conn: conn, clientID: cfg.clientID, version: wireVersion(cfg.version), used: time.Now(),
		codecOf: cfg.codecOf,
		readTO:  cfg.readTimeout, writeTO: cfg.writeTimeout,
		expect: make(chan wireExpect, 1),
		done:   make(chan struct{}),
	}
	go c.read()
	return c, nil
}

// close ends the connection; an answer still awaited fails. Called by the
// lane's goroutine only (the one that calls produce).
func (c *wireConn) close() {
	if !c.closed {
		c.closed = true
		_ = c.conn.Close()
		close(c.expect)
	}
}

// produce encodes the messages of parts (each partition's first n queued)
// into one request and writes it; cb receives the broker's answer.
func (c *wireConn) produce(parts []sentPart, acks sarama.RequiredAcks, timeout time.Duration, cb func(*sarama.ProduceResponse, error)) error {
	c.corr++
	b := c.buf[:0]
	b = append(b, 0, 0, 0, 0)               // size, filled in below
	b = binary.BigEndian.AppendUint16(b, 0) // api key: produce
	b = binary.BigEndian.AppendUint16(b, uint16(c.version))
	b = binary.BigEndian.AppendUint32(b, uint32(c.corr))
	b = appendString(b, c.clientID)
	b = binary.BigEndian.AppendUint16(b, 0xffff) // transactional id: null
	b = binary.BigEndian.AppendUint16(b, uint16(acks))
	b = binary.BigEndian.AppendUint32(b, uint32(timeout/time.Millisecond))
	// Topics, each with its partitions: parts are grouped by topic here,
	// as the request nests them.
	ntopics := 0
	for i := range parts {
		if firstOfTopic(parts, i) {
			ntopics++
		}
	}
	b = binary.BigEndian.AppendUint32(b, uint32(ntopics))
	now := time.Now().UnixMilli()
	for i, p := range parts {
		if !firstOfTopic(parts, i) {
			continue
		}
		topic := p.q.tp.topic
		b = appendString(b, topic)
		np := 0
		for _, o := range parts[i:] {
			if o.q.tp.topic == topic {
				np++
			}
		}
		b = binary.BigEndian.AppendUint32(b, uint32(np))
		for _, o := range parts[i:] {
			if o.q.tp.topic != topic {
				continue
			}
			b = binary.BigEndian.AppendUint32(b, uint32(o.q.tp.partition))
			var z *lz4Batch
			if c.codecOf(topic) == sarama.CompressionLZ4 {
				if c.z == nil {
					c.z = newLZ4Batch()
				}
				z = c.z
			}
			b = appendRecordBatch(b, o.q.queued()[:o.n], now, z)
		}
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	c.buf = b
	// The reader takes the expectation before the answer can arrive.
	select {
	case <-c.done:
		return fmt.Errorf("kafka connection closed: %w", sarama.ErrNotConnected)
	default:
	}
	select {
	case c.expect <- wireExpect{corr: c.corr, parts: parts, cb: cb}:
	case <-c.done:
		return fmt.Errorf("kafka connection closed: %w", sarama.ErrNotConnected)
	}
	c.used = time.Now()
	if c.writeTO > 0 {
		_ = c.conn.SetWriteDeadline(c.used.Add(c.writeTO))
	}
	if _, err := c.conn.Write(b); err != nil {
		// The reader, reading from a closed connection, fails the
		// expectation: the request has one outcome, reported once.
		_ = c.conn.Close()
	}
	return nil
}

// firstOfTopic says whether parts[i] is the first of its topic in parts.
func firstOfTopic(parts []sentPart, i int) bool {
	for _, p := range parts[:i] {
		if p.q.tp.topic == parts[i].q.tp.topic {
			return false
		}
	}
	return true
}

// read reads the answers, in order, and hands each to its expectation's
// callback, until the connection fails or closes.
func (c *wireConn) read() {
	defer close(c.done)
	var err error
	var hdr [8]byte
	var body []byte
	for exp := range c.expect {
		if err == nil {
			var resp *sarama.ProduceResponse
			resp, body, err = c.readAnswer(exp, hdr[:], body)
			if err == nil {
				exp.cb(resp, nil)
				continue
			}
			_ = c.conn.Close()
		}
		exp.cb(nil, err)
		return
	}
}

func (c *wireConn) readAnswer(exp wireExpect, hdr, body []byte) (*sarama.ProduceResponse, []byte, error) {
	if c.readTO > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(c.readTO))
	}
	if _, err := io.ReadFull(c.conn, hdr); err != nil {
		return nil, body, fmt.Errorf("kafka produce answer: %w", err)
	}
	size := int(binary.BigEndian.Uint32(hdr[:4])) - 4
	if corr := int32(binary.BigEndian.Uint32(hdr[4:8])); corr != exp.corr {
		return nil, body, fmt.Errorf("kafka produce answer: correlation id %d, want %d", corr, exp.corr)
	}
	if size < 0 || size > 64<<20 {
		return nil, body, fmt.Errorf("kafka produce answer: size %d", size)
	}
	if cap(body) < size {
		body = make([]byte, size)
	}
	body = body[:size]
	if _, err := io.ReadFull(c.conn, body); err != nil {
		return nil, body, fmt.Errorf("kafka produce answer: %w", err)
	}
	resp, err := parseProduceAnswer(body, c.version)
	if err != nil {
		return nil, body, fmt.Errorf("kafka produce answer: %w", err)
	}
	return resp, body, nil
}

// errShortAnswer is a produce answer that ends early.
var errShortAnswer = errors.New("truncated")

// parseProduceAnswer reads the per-partition error codes of a produce
// response (versions 3 to 8).
func parseProduceAnswer(b []byte, version int16) (*sarama.ProduceResponse, error) {
	r := &sarama.ProduceResponse{Version: version}
	rd := wireReader{b: b}
	ntopics := rd.int32()
	for range max(ntopics, 0) {
		topic := rd.string()
		nparts := rd.int32()
		for range max(nparts, 0) {
			partition := rd.int32()
			code := rd.int16()
			rd.skip(8 + 8) // base offset, log append time
			if version >= 5 {
				rd.skip(8) // log start offset
			}
			if version >= 8 {
				nerr := rd.int32()
				for range max(nerr, 0) {
					rd.skip(4)
					rd.string()
				}
				rd.string() // error message
			}
			if rd.err != nil {
				return nil, rd.err
			}
			r.AddTopicPartition(topic, partition, sarama.KError(code))
		}
	}
	return r, rd.err
}

// wireReader reads big-endian fields, remembering the first overrun.
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) take(n int) []byte {
	if r.err != nil || n < 0 || len(r.b) < n {
		r.err = errShortAnswer
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *wireReader) skip(n int) { r.take(n) }

func (r *wireReader) int16() int16 {
	if v := r.take(2); v != nil {
		return int16(binary.BigEndian.Uint16(v))
	}
	return 0
}

func (r *wireReader) int32() int32 {
	if v := r.take(4); v != nil {
		return int32(binary.BigEndian.Uint32(v))
	}
	return 0
}

// string reads a (nullable) string; null reads as "".
func (r *wireReader) string() string {
	n := r.int16()
	if n < 0 {
		return ""
	}
	return string(r.take(int(n)))
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendRecordBatch appends the records field of a partition: its length,
// then a record batch (magic 2, no producer id) of items, its records
// compressed by z (nil: uncompressed).
func appendRecordBatch(b []byte, items []laneItem, nowMillis int64, z *lz4Batch) []byte {
	lenAt := len(b)
	b = append(b, 0, 0, 0, 0)               // records field length
	b = binary.BigEndian.AppendUint64(b, 0) // base offset
	batchLenAt := len(b)
	b = append(b, 0, 0, 0, 0)                        // batch length
	b = binary.BigEndian.AppendUint32(b, 0xffffffff) // partition leader epoch: -1
	b = append(b, 2)                                 // magic
	crcAt := len(b)
	b = append(b, 0, 0, 0, 0) // crc
	attrAt := len(b)
	attrs := uint16(0) // no compression, create time
	if z != nil {
		attrs = uint16(sarama.CompressionLZ4)
	}
	b = binary.BigEndian.AppendUint16(b, attrs)
	b = binary.BigEndian.AppendUint32(b, uint32(len(items)-1))
	b = binary.BigEndian.AppendUint64(b, uint64(nowMillis))  // base timestamp
	b = binary.BigEndian.AppendUint64(b, uint64(nowMillis))  // max timestamp
	b = binary.BigEndian.AppendUint64(b, 0xffffffffffffffff) // producer id: -1
	b = binary.BigEndian.AppendUint16(b, 0xffff)             // producer epoch: -1
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)         // base sequence: -1
	b = binary.BigEndian.AppendUint32(b, uint32(len(items)))
	touchRecords(items, 0)
	if z != nil {
		b = z.append(b, items)
	} else {
		for i, it := range items {
			if i%touchAhead == 0 {
				touchRecords(items, i+touchAhead)
			}
			b = appendRecord(b, it.m, i)
		}
	}
	binary.BigEndian.PutUint32(b[crcAt:], crc32.Checksum(b[attrAt:], castagnoli))
	binary.BigEndian.PutUint32(b[batchLenAt:], uint32(len(b)-batchLenAt-4))
	binary.BigEndian.PutUint32(b[lenAt:], uint32(len(b)-lenAt-4))
	return b
}

// touchAhead is how many records ahead of the one written touchRecords
// reads, and how many at once.
const touchAhead = 16

// touchRecords reads the first byte of the keys and values of the
// touchAhead messages from items[from] on, so that the cache misses of a
// run of messages overlap: a lane writes messages long after they were
// encoded, and reading each one as it was written stalled on each miss in
// turn. KeepAlive keeps the reads.
func touchRecords(items []laneItem, from int) {
	var sum byte
	for i := from; i < min(from+touchAhead, len(items)); i++ {
		m := items[i].m
		if len(m.Key) > 0 {
			sum += m.Key[0]
		}
		if len(m.Value) > 0 {
			sum += m.Value[0]
		}
	}
	runtime.KeepAlive(sum)
}

// lz4Batch compresses a batch's records as Kafka's own producer does: one
// LZ4 frame of independent 64 KB blocks without checksums (the batch's
// CRC covers the compressed bytes). A connection keeps one, and with it
// the compressor's table and a buffer of uncompressed records. The frame
// is written here, each block compressed straight into the request: an
// lz4.Writer copied every block into a buffer of its own first.
type lz4Batch struct {
	c   lz4.Compressor
	raw []byte
}

func newLZ4Batch() *lz4Batch { return &lz4Batch{} }

// lz4FrameHeader: the magic number, then FLG (version 01, independent
// blocks, no checksums, no content size), BD (blocks of at most 64 KB) and
// the descriptor's checksum (the second byte of xxHash32 of FLG and BD).
var lz4FrameHeader = [...]byte{0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82}

// lz4Block is the frame's block size (BD above).
const lz4Block = 64 << 10

// maxKeptRecords bounds the uncompressed buffer an lz4Batch keeps between
// requests: a block and the record that overflowed it, unless a record is
// larger than that.
const maxKeptRecords = 1 << 20

// append appends items' records, compressed. Records are compressed a
// block at a time as they fill one, not once the whole batch is written:
// the block is still in the cache, and the buffer holds one block, not a
// whole request.
func (z *lz4Batch) append(b []byte, items []laneItem) []byte {
	b = append(b, lz4FrameHeader[:]...)
	raw := z.raw[:0]
	for i, it := range items {
		if i%touchAhead == 0 {
			touchRecords(items, i+touchAhead)
		}
		raw = appendRecord(raw, it.m, i)
		if len(raw) >= lz4Block {
			full := len(raw) / lz4Block * lz4Block
			b = z.blocks(b, raw[:full])
			raw = raw[:copy(raw, raw[full:])]
		}
	}
	b = z.blocks(b, raw)
	b = append(b, 0, 0, 0, 0) // end mark
	if cap(raw) <= maxKeptRecords {
		// The records are copied, not referenced: nothing is kept alive.
		z.raw = raw[:0]
	} else {
		z.raw = nil
	}
	return b
}

// blocks appends src as frame blocks of lz4Block bytes (the last one
// shorter).
func (z *lz4Batch) blocks(b, src []byte) []byte {
	for len(src) > 0 {
		blk := src[:min(len(src), lz4Block)]
		src = src[len(blk):]
		// Room for the block stored as it is, with its size.
		b = slices.Grow(b, 4+len(blk))
		at := len(b)
		// A destination no larger than the block: a block that would not
		// shrink is not compressed (n == 0) and is stored as it is.
		n, err := z.c.CompressBlock(blk, b[at+4:at+4+len(blk)])
		if err != nil || n == 0 {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(blk))|1<<31)
			b = append(b, blk...)
			continue
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(n))
		b = b[:at+4+n]
	}
	return b
}

// appendRecord appends one record (timestamp delta 0): its length, then
// attributes, deltas, key (null when empty), value (null for a tombstone)
// and headers.
func appendRecord(b []byte, m *Outgoing, offsetDelta int) []byte {
	n := 1 + 1 + varintLen(int64(offsetDelta)) + bytesLen(len(m.Key), len(m.Key) == 0) +
		bytesLen(len(m.Value), m.Value == nil) + varintLen(int64(m.headerCount()))
	for i := range m.headerCount() {
		h := m.header(i)
		n += bytesLen(len(h.Key), false) + bytesLen(len(h.Value), false)
	}
	b = binary.AppendVarint(b, int64(n))
	b = append(b, 0, 0) // attributes; timestamp delta 0
	b = binary.AppendVarint(b, int64(offsetDelta))
	if len(m.Key) == 0 {
		b = binary.AppendVarint(b, -1)
	} else {
		b = binary.AppendVarint(b, int64(len(m.Key)))
		b = append(b, m.Key...)
	}
	if m.Value == nil {
		b = binary.AppendVarint(b, -1)
	} else {
		b = binary.AppendVarint(b, int64(len(m.Value)))
		b = append(b, m.Value...)
	}
	b = binary.AppendVarint(b, int64(m.headerCount()))
	for i := range m.headerCount() {
		h := m.header(i)
		b = binary.AppendVarint(b, int64(len(h.Key)))
		b = append(b, h.Key...)
		b = binary.AppendVarint(b, int64(len(h.Value)))
		b = append(b, h.Value...)
	}
	return b
}

// bytesLen is the encoded size of a varint-length-prefixed field.
func bytesLen(n int, null bool) int {
	if null {
		return 1
	}
	return varintLen(int64(n)) + n
}

// varintLen is the size of x as a zigzag varint.
func varintLen(x int64) int {
	ux := uint64(x) << 1
	if x < 0 {
		ux = ^ux
	}
	// Seven bits a byte, at least one byte: no loop, it runs several
	// times for every record of every request.
	return (bits.Len64(ux|1) + 6) / 7
}
