package buffer

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/bgpedge/bgpedge/record"
)

// TestReclaimReusesActiveSegment appends 8 MiB while acknowledging with a lag
// of four appends: the active segment must reuse the pages of acknowledged
// blocks instead of growing, and after a reopen exactly the unacknowledged
// records come back and seqs go on.
func TestReclaimReusesActiveSegment(t *testing.T) {
	const (
		appends   = 512
		perAppend = 16
		size      = 1024
		lag       = 4
	)
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 20})
	rng := rand.New(rand.NewPCG(5, 5))
	recs := testRecords(rng, perAppend, size)
	ctx := context.Background()
	var firsts []uint64
	var peak int64
	for i := 0; i < appends; i++ {
		first, err := s.Append(ctx, recs...)
		if err != nil {
			t.Fatal(err)
		}
		firsts = append(firsts, first)
		if i >= lag {
			if err := s.AckThrough(firsts[i-lag] + perAppend - 1); err != nil {
				t.Fatal(err)
			}
		}
		peak = max(peak, dirBytes(t, dir))
	}
	// Without reclaiming the file would hold all 8 MiB; with it, the backlog
	// (lag+1 blocks of 16 KiB) plus pages freed but not yet reusable and
	// bbolt's own pages.
	if peak > 1<<20 {
		t.Fatalf("spool grew to %d bytes for a backlog of %d", peak, (lag+1)*perAppend*size)
	}
	if n := s.counts().Segments; n != 1 {
		t.Fatalf("%d segments, want the one active segment", n)
	}
	acked := s.counts().AckedThrough
	last := firsts[appends-1] + perAppend - 1
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, Options{Dir: dir, SegmentBytes: 64 << 20})
	if f := s.FirstUnacked(); f != acked+1 {
		t.Fatalf("first unacked after reopen %d, want %d", f, acked+1)
	}
	// Reading from 1 finds nothing below the first block that remains.
	got := readAll(t, s.Spool, 1)
	if len(got) == 0 || got[0].Seq > acked+1 || got[len(got)-1].Seq != last {
		t.Fatalf("read back %d records, seqs %d..%d; want through %d from at most %d", len(got), got[0].Seq, got[len(got)-1].Seq, last, acked+1)
	}
	for i, r := range got {
		if r.Seq != got[0].Seq+uint64(i) || !payloadOK(r.Payload) {
			t.Fatalf("record %d: seq %d intact %v", i, r.Seq, payloadOK(r.Payload))
		}
	}
	if first, err := s.Append(ctx, recs[0]); err != nil || first != last+1 {
		t.Fatalf("append after reopen: seq %d, %v; want %d", first, err, last+1)
	}
}

// TestReclaimRotatesBySeqSpan keeps a tiny backlog of small records, so the
// active segment could take seqs forever without growing. It must rotate
// before it holds more seqs than it has bytes: that bound is what keeps seqs
// from being reused when the segment is later found unreadable.
func TestReclaimRotatesBySeqSpan(t *testing.T) {
	s := openTest(t, Options{SegmentBytes: 64 << 20})
	rng := rand.New(rand.NewPCG(6, 6))
	recs := testRecords(rng, 256, 8)
	rotations := 0
	s.mu.Lock()
	active := s.segs[0]
	s.mu.Unlock()
	for i := 0; i < 2000; i++ {
		appendAcked(t, s.Spool, recs)
		s.mu.Lock()
		for _, seg := range s.segs {
			if seg.end-seg.first > uint64(seg.size) {
				s.mu.Unlock()
				t.Fatalf("segment %s holds %d seqs in %d bytes", filepath.Base(seg.path), seg.end-seg.first, seg.size)
			}
		}
		if act := s.segs[len(s.segs)-1]; act != active {
			rotations++
			active = act
		}
		s.mu.Unlock()
	}
	if rotations == 0 {
		t.Fatalf("512,000 seqs went into one segment of %d bytes without a rotation", active.size)
	}
	testenvEventually(t, "acknowledged segments deleted", func() bool { return s.counts().Segments == 1 })
	t.Logf("%d rotations", rotations)
}

// TestReclaimedGapMustBeAcked: a segment whose first block is past its first
// seq is valid only if the watermark stored in it covers the gap; otherwise
// records would have vanished, and the segment is quarantined with its seqs
// never handed out again.
func TestReclaimedGapMustBeAcked(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir})
	recs := testRecords(rand.New(rand.NewPCG(7, 7)), 10, 100)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := s.Append(ctx, recs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AckThrough(20); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, recs...); err != nil { // reclaims blocks 1 and 11
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := listSegments(dir)
	path := files[0].path
	db, err := bolt.Open(path, 0o640, nil)
	if err != nil {
		t.Fatal(err)
	}
	var firstKey uint64
	lower := func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketBlocks()).Cursor().First()
		firstKey = binary.BigEndian.Uint64(k)
		return tx.Bucket(bucketMeta()).Put(keyAcked(), binary.BigEndian.AppendUint64(nil, 15))
	}
	// Twice: Open rolls back the last commit of a newest segment that does
	// not verify, which would undo a single change.
	err = db.Update(lower)
	if err == nil {
		err = db.Update(lower)
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if firstKey != 21 {
		t.Fatalf("first block after reclaiming %d, want 21", firstKey)
	}

	s = openTest(t, Options{Dir: dir})
	if q := testutil.ToFloat64(s.m.quarantined); q != 1 {
		t.Fatalf("quarantined %v, want the segment whose gap is not acknowledged", q)
	}
	if first, err := s.Append(ctx, recs[0]); err != nil || first <= 40 {
		t.Fatalf("append after quarantine: seq %d, %v; seqs up to 40 were handed out", first, err)
	}
}

// TestKeepAckedKeepsRecords: with KeepAcked the acknowledged records stay
// readable and the file grows as before reclaiming existed.
func TestKeepAckedKeepsRecords(t *testing.T) {
	s := openTest(t, Options{KeepAcked: true})
	recs := testRecords(rand.New(rand.NewPCG(9, 9)), 16, 1024)
	for i := 0; i < 64; i++ {
		appendAcked(t, s.Spool, recs)
	}
	got := readAll(t, s.Spool, 1)
	if len(got) != 64*16 || got[0].Seq != 1 {
		t.Fatalf("read %d acknowledged records from seq %d, want all %d from 1", len(got), firstSeq(got), 64*16)
	}
	if b := s.Stats().Bytes; b < 64*16*1024 {
		t.Fatalf("spool holds %d bytes, less than the %d appended", b, 64*16*1024)
	}
}

func firstSeq(recs []record.Record) uint64 {
	if len(recs) == 0 {
		return 0
	}
	return recs[0].Seq
}

// appendAcked appends recs and acknowledges them at once, as a forwarder that
// keeps up would.
func appendAcked(t *testing.T, s *Spool, recs []record.Record) {
	t.Helper()
	first, err := s.Append(context.Background(), recs...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AckThrough(first + uint64(len(recs)) - 1); err != nil {
		t.Fatal(err)
	}
}
