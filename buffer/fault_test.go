//go:build linux

package buffer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/record"
)

const fullDiskDirEnv = "BGPEDGE_BUFFER_FULLDISK_DIR"

// fullDiskChild is the child of TestFullDisk (run through TestMain). Under a lowered
// RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with EFBIG) it appends until
// Append fails, checks that every later append fails cleanly and that all
// acknowledged records still read back, raises the limit (space returns) and
// appends again, then fills up once more and closes. It reports like
// crashChild: "A first crc..." per acknowledged append.
func fullDiskChild(dir string) {
	signal.Ignore(syscall.SIGXFSZ)
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	s, err := Open(Options{Dir: dir, SegmentBytes: 64 << 20})
	if err != nil {
		say("E open: %v", err)
		return
	}
	rng := rand.New(rand.NewPCG(11, 11))
	ctx := context.Background()
	appendOne := func() error {
		recs := testRecords(rng, 1+rng.IntN(20), 100+rng.IntN(4000))
		first, err := s.Append(ctx, recs...)
		if err != nil {
			return err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "A %d", first)
		for _, r := range recs {
			fmt.Fprintf(&b, " %d", crc32.ChecksumIEEE(r.Payload))
		}
		say("%s", b.String())
		return nil
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		say("E getrlimit: %v", err)
		return
	}
	for round := 0; round < 2; round++ {
		for i := 0; i < 20; i++ {
			if err := appendOne(); err != nil {
				say("E append before limit: %v", err)
				return
			}
		}
		st, err := os.Stat(s.segs[len(s.segs)-1].path)
		if err != nil {
			say("E stat: %v", err)
			return
		}
		low := syscall.Rlimit{Cur: uint64(st.Size()) + 200<<10, Max: lim.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &low); err != nil {
			say("E setrlimit: %v", err)
			return
		}
		var full error
		for i := 0; i < 10_000 && full == nil; i++ {
			full = appendOne()
		}
		if !errors.Is(full, ErrFull) {
			say("E append under the limit failed with %v, want ErrFull", full)
			return
		}
		say("F %v", full)
		// A smaller batch may still fit below the limit; anything else
		// than success or ErrFull is a failure.
		for i := 0; i < 5; i++ {
			if err := appendOne(); err != nil && !errors.Is(err, ErrFull) {
				say("E append while full: %v", err)
				return
			}
		}
		if recs, err := s.readAvailable(1, 1000); err != nil || len(recs) == 0 {
			say("E nothing readable while full (%d records, %v)", len(recs), err)
			return
		}
		if round == 1 {
			break // close while still full
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			say("E setrlimit: %v", err)
			return
		}
		if err := appendOne(); err != nil {
			say("E append after space returned: %v", err)
			return
		}
		say("R recovered")
	}
	if err := s.Close(); err != nil {
		say("E close while full: %v", err)
		return
	}
	say("D done")
}

// TestFullDisk shows a full disk (RLIMIT_FSIZE in a child process) makes
// Append fail with ErrFull, loses and corrupts nothing acknowledged, and
// that appends work again once space returns, in the same process and in a
// new one.
func TestFullDisk(t *testing.T) {
	t.Parallel() // waits on fsync; overlaps with the other slow tests
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.v=false")
	cmd.Env = append(os.Environ(), fullDiskDirEnv+"="+dir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	o := &crashOracle{crc: map[uint64]uint32{}}
	var full, recovered, done bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "F "):
			full = true
			if !strings.Contains(line, "file too large") {
				t.Errorf("full-disk error does not name the cause: %s", line)
			}
		case strings.HasPrefix(line, "R "):
			recovered = true
		case strings.HasPrefix(line, "D "):
			done = true
		}
		o.consume(t, line)
	}
	if len(o.childErrs) > 0 || !full || !recovered || !done {
		t.Fatalf("child errors %q; full %v recovered %v done %v\n%s", o.childErrs, full, recovered, done, out)
	}
	// No acks were made, so every acknowledged append must read back.
	o.maxAck = 0
	o.verify(t, dir, 0)
	t.Logf("%d acknowledged records survived two full-disk episodes", len(o.crc))
}

// corruptSetup writes records over several small segments, closes the
// spool, and returns the records and the path of a middle segment.
func corruptSetup(t *testing.T, dir string) ([]record.Record, string) {
	t.Helper()
	s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	rng := rand.New(rand.NewPCG(12, 12))
	var all []record.Record
	for i := 0; i < 60; i++ {
		recs := testRecords(rng, 10, 500)
		first, err := s.Append(context.Background(), recs...)
		if err != nil {
			t.Fatal(err)
		}
		for j := range recs {
			recs[j].Seq = first + uint64(j)
		}
		all = append(all, recs...)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := listSegments(dir)
	if err != nil || len(files) < 4 {
		t.Fatalf("%d segments, %v", len(files), err)
	}
	return all, files[1].path
}

func TestCorruptSegmentQuarantined(t *testing.T) {
	t.Parallel() // waits on fsync; overlaps with the other slow tests
	tests := []struct {
		name    string
		corrupt func(t *testing.T, path string, recs []record.Record, first uint64)
	}{
		{"payload bytes", func(t *testing.T, path string, recs []record.Record, first uint64) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(b, recs[first+2-1].Payload)
			if i < 0 {
				t.Fatal("payload not found in segment")
			}
			writeAt(t, path, i+100, bytes.Repeat([]byte{0xff}, 16))
		}},
		{"both meta pages", func(t *testing.T, path string, _ []record.Record, _ uint64) {
			writeAt(t, path, 0, make([]byte, 8192))
		}},
		{"truncated", func(t *testing.T, path string, _ []record.Record, _ uint64) {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, st.Size()/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"every data page overwritten", func(t *testing.T, path string, _ []record.Record, _ uint64) {
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			junk := make([]byte, st.Size()-8192)
			rng := rand.New(rand.NewPCG(1, 3))
			for i := range junk {
				junk[i] = byte(rng.Uint32())
			}
			writeAt(t, path, 8192, junk)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			all, path := corruptSetup(t, dir)
			var lo, hi uint64 // the corrupted segment holds [lo, hi)
			files, _ := listSegments(dir)
			lo, hi = files[1].first, files[2].first
			tt.corrupt(t, path, all, lo)

			s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
			if _, err := os.Stat(path + quarantineSuffix); err != nil {
				t.Fatalf("segment not moved aside: %v\n%s", err, s.logs)
			}
			if q := testutil.ToFloat64(s.m.quarantined); q != 1 {
				t.Fatalf("quarantined counter %v", q)
			}
			if !strings.Contains(s.logs.String(), "spool segment quarantined") {
				t.Fatalf("quarantine not logged:\n%s", s.logs)
			}
			got := readAll(t, s.Spool, 1)
			if len(got) != len(all)-int(hi-lo) {
				t.Fatalf("read %d records, want %d (all but %d..%d)", len(got), len(all)-int(hi-lo), lo, hi-1)
			}
			for _, r := range got {
				if r.Seq >= lo && r.Seq < hi {
					t.Fatalf("seq %d from the quarantined segment was read", r.Seq)
				}
				if err := sameRecord(r, all[r.Seq-1]); err != nil {
					t.Fatalf("seq %d: %v", r.Seq, err)
				}
			}
			first, err := s.Append(context.Background(), all[0])
			if err != nil || first != uint64(len(all))+1 {
				t.Fatalf("append after quarantine: %d, %v", first, err)
			}
			// Acks pass over the lost range.
			if err := s.AckThrough(lo - 1); err != nil {
				t.Fatal(err)
			}
			if f := s.FirstUnacked(); f != hi {
				t.Fatalf("first unacked %d, want %d", f, hi)
			}
		})
	}
}

// TestCorruptBlockFoundByRead damages a block while the spool is open:
// Read skips it (counted and logged) and hands out everything else.
func TestCorruptBlockFoundByRead(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	all := appendBlocks(t, s.Spool, 13, 30)
	files, _ := listSegments(dir)
	b, err := os.ReadFile(files[0].path)
	if err != nil {
		t.Fatal(err)
	}
	// Records 11..20 are the second block of the first segment.
	i := bytes.Index(b, all[14].Payload)
	if i < 0 {
		t.Fatal("payload not found")
	}
	writeAt(t, files[0].path, i+10, []byte("corrupted"))
	requireAllBut(t, readAll(t, s.Spool, 1), all, 11, 21)
	if d := testutil.ToFloat64(s.m.dropped.WithLabelValues(dropCorrupt)); d != 10 {
		t.Fatalf("dropped{corrupt} = %v, want 10", d)
	}
	if !strings.Contains(s.logs.String(), "spool block unreadable") {
		t.Fatalf("not logged:\n%s", s.logs)
	}
	if err := s.AckThrough(10); err != nil {
		t.Fatal(err)
	}
	if f := s.FirstUnacked(); f != 21 {
		t.Fatalf("first unacked %d, want 21 (the damaged block counts as gone)", f)
	}
}

func writeAt(t *testing.T, path string, off int, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(off)); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptNewestSegmentSeqsNotReused quarantines the newest segment, whose
// last seq is then unknown: new appends must still get seqs above anything
// it could have held, so downstream deduplication never confuses records.
func TestCorruptNewestSegmentSeqsNotReused(t *testing.T) {
	dir := t.TempDir()
	all, _ := corruptSetup(t, dir)
	files, _ := listSegments(dir)
	newest := files[len(files)-1]
	writeAt(t, newest.path, 0, make([]byte, 8192))
	s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	if q := testutil.ToFloat64(s.m.quarantined); q != 1 {
		t.Fatalf("quarantined %v", q)
	}
	first, err := s.Append(context.Background(), all[0])
	if err != nil {
		t.Fatal(err)
	}
	if first <= uint64(len(all)) {
		t.Fatalf("append after losing the newest segment got seq %d; seqs up to %d were handed out", first, len(all))
	}
	got := readAll(t, s.Spool, 1)
	if n := len(got); n != int(newest.first) /* records 1..newest.first-1, plus the new one */ {
		t.Fatalf("read %d records, want %d", n, newest.first)
	}
}

// tornLastCommit leaves in a new spool what a power cut can leave with one
// fdatasync per commit: three commits of ten records, the newest one's meta
// page on disk but not all of its data. It returns the spool directory, the
// records appended and the segment file.
func tornLastCommit(t *testing.T, seed uint64) (dir string, all []record.Record, seg string) {
	t.Helper()
	dir = t.TempDir()
	s := openTest(t, Options{Dir: dir})
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := 0; i < 3; i++ {
		recs := testRecords(rng, 10, 500)
		if _, err := s.Append(context.Background(), recs...); err != nil {
			t.Fatal(err)
		}
		all = append(all, recs...)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := listSegments(dir)
	b, err := os.ReadFile(files[0].path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, all[25].Payload) // inside the last commit (records 21..30)
	if i < 0 {
		t.Fatal("payload not found")
	}
	writeAt(t, files[0].path, i, make([]byte, 200))
	return dir, all, files[0].path
}

// TestTornLastCommitRolledBack simulates what a power cut can leave with one
// fdatasync per commit: the newest commit's meta page on disk but not all of
// its data. The spool must roll back to the previous commit instead of
// quarantining the segment, keep every earlier record, and not reuse seqs.
func TestTornLastCommitRolledBack(t *testing.T) {
	dir, all, _ := tornLastCommit(t, 14)

	s2 := openTest(t, Options{Dir: dir})
	if q := testutil.ToFloat64(s2.m.quarantined); q != 0 {
		t.Fatalf("segment quarantined instead of rolled back:\n%s", s2.logs)
	}
	if !strings.Contains(s2.logs.String(), "rolled back") {
		t.Fatalf("rollback not logged:\n%s", s2.logs)
	}
	got := readAll(t, s2.Spool, 1)
	if len(got) != 20 {
		t.Fatalf("read %d records, want the 20 of the earlier commits", len(got))
	}
	for _, r := range got {
		if err := sameRecord(r, all[r.Seq-1]); err != nil {
			t.Fatalf("seq %d: %v", r.Seq, err)
		}
	}
	first, err := s2.Append(context.Background(), all[0])
	if err != nil || first <= 30 {
		t.Fatalf("append after rollback: seq %d, %v (seqs up to 30 were handed out)", first, err)
	}
}

// TestTornLastCommitReadOnly: a read-only open (`bgpedge buffer stats`,
// `inspect`) of a segment with a torn last commit reads it as the writer
// will after its rollback, reports the segment as torn, and leaves the file
// as it is.
func TestTornLastCommitReadOnly(t *testing.T) {
	dir, all, seg := tornLastCommit(t, 16)
	torn, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}

	ro := openTest(t, Options{Dir: dir, ReadOnly: true})
	st := ro.Stats()
	if st.Records != 20 || st.LastSeq != 20 || len(st.TornSegments) != 1 || len(st.UnreadableSegments) != 0 {
		t.Fatalf("read-only stats: %d records, last seq %d, torn %v, unreadable %v; want 20, 20, one torn segment",
			st.Records, st.LastSeq, st.TornSegments, st.UnreadableSegments)
	}
	got := readAll(t, ro.Spool, 1)
	if len(got) != 20 {
		t.Fatalf("read-only read %d records, want 20", len(got))
	}
	for _, r := range got {
		if err := sameRecord(r, all[r.Seq-1]); err != nil {
			t.Fatalf("seq %d: %v", r.Seq, err)
		}
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	if after, err := os.ReadFile(seg); err != nil || !bytes.Equal(after, torn) {
		t.Fatalf("read-only open changed the segment file (%v)", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(os.TempDir(), "bgpedge-rollback-*")); len(leftovers) > 0 {
		t.Errorf("rollback copies left behind: %v", leftovers)
	}

	// Damage beyond the last commit: left out, and said so.
	writeAt(t, seg, 0, make([]byte, 8192))
	ro = openTest(t, Options{Dir: dir, ReadOnly: true})
	if st := ro.Stats(); st.Records != 0 || len(st.UnreadableSegments) != 1 {
		t.Fatalf("read-only stats of an unreadable segment: %d records, unreadable %v", st.Records, st.UnreadableSegments)
	}
}

// TestBrokenPageFoundByRead: a page header damaged after start-up makes
// bbolt panic inside Read. The records before the damage are handed out, the
// rest of that segment is skipped and counted once, and reading goes on in
// the next segment instead of retrying the same panic forever.
func TestBrokenPageFoundByRead(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	all := appendBlocks(t, s.Spool, 17, 30)
	files, _ := listSegments(dir)
	if len(files) < 2 {
		t.Fatalf("want several segments, have %d", len(files))
	}
	b, err := os.ReadFile(files[0].path)
	if err != nil {
		t.Fatal(err)
	}
	// The page that holds the second block (records 11..20): its type flags
	// become invalid, which bbolt meets with a panic.
	i := bytes.Index(b, all[10].Payload)
	if i < 0 {
		t.Fatal("payload not found")
	}
	page := i - i%os.Getpagesize()
	writeAt(t, files[0].path, page+8, []byte{0xff, 0xff})
	segEnd := files[1].first // the first segment holds [1, segEnd)

	done := make(chan []record.Record, 1)
	go func() { done <- readAll(t, s.Spool, 1) }()
	var got []record.Record
	select {
	case got = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Read did not return: the same damage is retried forever")
	}
	requireAllBut(t, got, all, 11, segEnd)
	if d := testutil.ToFloat64(s.m.dropped.WithLabelValues(dropCorrupt)); d != float64(segEnd-11) {
		t.Fatalf("dropped{corrupt} = %v, want %d: each lost record counted once", d, segEnd-11)
	}
	if n := strings.Count(s.logs.String(), "spool block unreadable"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, s.logs)
	}
	if st := s.Stats(); st.Records == 0 { // a scrape reads the oldest record: must return
		t.Fatalf("stats: %+v", st)
	}
}

// TestAckPersistFailureReported: a watermark that cannot be written keeps
// acknowledged segments on disk, so the failure is counted, logged, and
// returned by Close rather than passing unseen.
func TestAckPersistFailureReported(t *testing.T) {
	var failing atomic.Bool
	s := openTest(t, Options{syncHook: func() error {
		if failing.Load() {
			return syscall.EIO
		}
		return nil
	}})
	rng := rand.New(rand.NewPCG(5, 5))
	if _, err := s.Append(context.Background(), testRecords(rng, 10, 100)...); err != nil {
		t.Fatal(err)
	}
	failing.Store(true) // every fdatasync from now on fails
	if err := s.AckThrough(10); err != nil {
		t.Fatal(err)
	}
	err := s.Close()
	if err == nil || !strings.Contains(err.Error(), "persist ack watermark") || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Close: %v, want the failed watermark write", err)
	}
	if n := testutil.ToFloat64(s.m.ackPersistErrors); n < 1 {
		t.Fatalf("ack persist errors %v", n)
	}
	if !strings.Contains(s.logs.String(), "could not persist the ack watermark") {
		t.Fatalf("not logged:\n%s", s.logs)
	}
}

// TestSegmentOpenErrorNotDamage: a segment that cannot be opened for a
// reason outside its contents (permissions, no memory) makes Open fail,
// naming it, instead of being rolled back or set aside; once the cause is
// gone every record is there.
func TestSegmentOpenErrorNotDamage(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	all := appendBlocks(t, s.Spool, 9, 20)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := listSegments(dir)
	for _, errno := range []syscall.Errno{syscall.EACCES, syscall.ENOMEM} {
		for _, victim := range []segFile{files[0], files[len(files)-1]} {
			_, err := Open(Options{Dir: dir, Logger: slog.New(slog.DiscardHandler), openSegment: func(f segFile, ro bool) (*segment, segmentInfo, error) {
				if f.path == victim.path {
					return nil, segmentInfo{}, fmt.Errorf("open: %w", &fs.PathError{Op: "open", Path: f.path, Err: errno})
				}
				return openSegment(f, ro)
			}})
			if err == nil || !errors.Is(err, errno) || !strings.Contains(err.Error(), filepath.Base(victim.path)) {
				t.Fatalf("%v on %s: Open = %v, want that error naming the file", errno, filepath.Base(victim.path), err)
			}
			if after, _ := listSegments(dir); len(after) != len(files) {
				t.Fatalf("%v: %d segments left of %d: one was set aside", errno, len(after), len(files))
			}
		}
	}
	s2 := openTest(t, Options{Dir: dir})
	got := readAll(t, s2.Spool, 1)
	if len(got) != len(all) {
		t.Fatalf("read %d records after the cause went away, want %d", len(got), len(all))
	}
	if q := testutil.ToFloat64(s2.m.quarantined); q != 0 {
		t.Fatalf("quarantined %v", q)
	}
}

// TestFailedSyncStartsNewSegment: an Append whose fdatasync fails returns
// the error; its records may or may not survive, so the retry stores them
// again (at least once), and the next commit goes to a new segment, keeping
// the doubtful commit the last of its own.
func TestFailedSyncStartsNewSegment(t *testing.T) {
	var failNext atomic.Bool
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, syncHook: func() error {
		if failNext.CompareAndSwap(true, false) {
			return syscall.EIO
		}
		return nil
	}})
	rng := rand.New(rand.NewPCG(3, 3))
	ctx := context.Background()
	if _, err := s.Append(ctx, testRecords(rng, 5, 100)...); err != nil {
		t.Fatal(err)
	}
	doubtful := testRecords(rng, 5, 100)
	failNext.Store(true)
	if _, err := s.Append(ctx, doubtful...); !errors.Is(err, syscall.EIO) {
		t.Fatalf("append with a failed sync: %v", err)
	}
	before := s.counts().Segments
	first, err := s.Append(ctx, doubtful...)
	if err != nil {
		t.Fatal(err)
	}
	if after := s.counts().Segments; after != before+1 {
		t.Fatalf("segments %d after the retry, want %d: the commit after a failed sync must start a new one", after, before+1)
	}
	if first != 11 {
		t.Fatalf("retry got seq %d, want 11 (seqs of the doubtful commit are not reused)", first)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openTest(t, Options{Dir: dir})
	got := readAll(t, s2.Spool, 1)
	if len(got) != 15 {
		t.Fatalf("read %d records, want 15 (the doubtful five twice)", len(got))
	}
	for i, r := range got[10:] {
		if err := sameRecord(r, doubtful[i]); err != nil {
			t.Fatalf("retried record %d: %v", i, err)
		}
	}
}

// appendBlocks appends n commits of 10 records of 500 bytes and returns
// the records in seq order.
func appendBlocks(t *testing.T, s *Spool, seed uint64, n int) []record.Record {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	var all []record.Record
	for range n {
		recs := testRecords(rng, 10, 500)
		if _, err := s.Append(context.Background(), recs...); err != nil {
			t.Fatal(err)
		}
		all = append(all, recs...)
	}
	return all
}

// requireAllBut checks that got is every record of all (seq i at all[i-1])
// except seqs [lo, hi), intact.
func requireAllBut(t *testing.T, got, all []record.Record, lo, hi uint64) {
	t.Helper()
	if want := len(all) - int(hi-lo); len(got) != want {
		t.Fatalf("read %d records, want %d (all but seqs %d..%d)", len(got), want, lo, hi-1)
	}
	for _, r := range got {
		if r.Seq >= lo && r.Seq < hi {
			t.Fatalf("seq %d of the damaged range was returned", r.Seq)
		}
		if err := sameRecord(r, all[r.Seq-1]); err != nil {
			t.Fatalf("seq %d: %v", r.Seq, err)
		}
	}
}
