package buffer

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/record"
)

// readAll reads every record from `from` until nothing more is available.
func readAll(t testing.TB, s *Spool, from uint64) []record.Record {
	t.Helper()
	var out []record.Record
	for {
		recs, err := s.readAvailable(from, 1000)
		if err != nil {
			t.Fatalf("read from %d: %v", from, err)
		}
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
		from = recs[len(recs)-1].Seq + 1
	}
}

func TestAppendReadAckReopen(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 7))
	s := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	ctx := context.Background()
	var want []record.Record
	for i := 0; i < 50; i++ {
		recs := testRecords(rng, 1+rng.IntN(40), 10+rng.IntN(2000))
		first, err := s.Append(ctx, recs...)
		if err != nil {
			t.Fatal(err)
		}
		if first != uint64(len(want))+1 {
			t.Fatalf("append %d: first %d, want %d", i, first, len(want)+1)
		}
		want = append(want, recs...)
	}
	if st := s.Stats(); st.Segments < 3 || st.Records != uint64(len(want)) || st.LastSeq != uint64(len(want)) {
		t.Fatalf("stats %+v after %d records", st, len(want))
	}
	got := readAll(t, s.Spool, 1)
	if len(got) != len(want) {
		t.Fatalf("read %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, got[i].Seq)
		}
		if err := sameRecord(got[i], want[i]); err != nil {
			t.Fatalf("seq %d: %v", i+1, err)
		}
	}
	// Small reads walk a block piece by piece (the block cache) in order.
	for from, n := uint64(1), 0; n < 100; n++ {
		recs, err := s.Read(ctx, from, 3)
		if err != nil || len(recs) == 0 || recs[0].Seq != from {
			t.Fatalf("read(%d, 3) = %d records, %v", from, len(recs), err)
		}
		from = recs[len(recs)-1].Seq + 1
	}

	half := uint64(len(want) / 2)
	before := s.counts().Segments
	if before < 3 {
		t.Fatalf("only %d segments; the test needs several", before)
	}
	if err := s.AckThrough(half); err != nil {
		t.Fatal(err)
	}
	if err := s.AckThrough(uint64(len(want)) + 1); !errors.Is(err, ErrUnknownSeq) {
		t.Fatalf("ack beyond end: %v", err)
	}
	testenvEventually(t, "acked segments deleted", func() bool { return s.counts().Segments < before })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := s.Append(ctx, want[0]); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if _, err := s.Read(ctx, 1, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}

	s2 := openTest(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	if f := s2.FirstUnacked(); f != half+1 {
		t.Fatalf("first unacked after reopen %d, want %d", f, half+1)
	}
	got = readAll(t, s2.Spool, s2.FirstUnacked())
	if len(got) != len(want)-int(half) {
		t.Fatalf("after reopen read %d, want %d", len(got), len(want)-int(half))
	}
	for _, r := range got {
		if err := sameRecord(r, want[r.Seq-1]); err != nil {
			t.Fatalf("seq %d after reopen: %v", r.Seq, err)
		}
	}
	first, err := s2.Append(ctx, want[0])
	if err != nil || first != uint64(len(want))+1 {
		t.Fatalf("append after reopen: %d, %v", first, err)
	}
}

func TestReadBlocksUntilAppend(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	got := make(chan []record.Record, 1)
	go func() {
		recs, err := s.Read(ctx, 1, 10)
		if err != nil {
			t.Error(err)
		}
		got <- recs
	}()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.Read(tctx, 1, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read on empty spool: %v", err)
	}
	if _, err := s.Append(ctx, record.Record{Kind: record.KindExaBGP, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if recs := <-got; len(recs) != 1 || recs[0].Seq != 1 || string(recs[0].Payload) != "x" {
		t.Fatalf("blocked read returned %+v", recs)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(ctx, 2, 10)
		done <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("read blocked across close: %v", err)
	}
}

func TestSingleAcksOutOfOrder(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 1))
	if _, err := s.Append(ctx, testRecords(rng, 10, 20)...); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ack  uint64
		want uint64
	}{{3, 1}, {2, 1}, {1, 4}, {5, 4}, {7, 4}, {4, 6}, {6, 8}, {10, 8}, {9, 8}, {8, 11}} {
		if err := s.Ack(tc.ack); err != nil {
			t.Fatal(err)
		}
		if f := s.FirstUnacked(); f != tc.want {
			t.Fatalf("after ack %d: first unacked %d, want %d", tc.ack, f, tc.want)
		}
	}
	if err := s.Ack(11); !errors.Is(err, ErrUnknownSeq) {
		t.Fatalf("ack of unknown seq: %v", err)
	}
}

func TestConcurrentAppendersAreCoalesced(t *testing.T) {
	s := openTest(t, Options{MaxDelay: 5 * time.Millisecond})
	ctx := context.Background()
	const appenders, each = 32, 20
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for a := 0; a < appenders; a++ {
		wg.Add(1)
		go func(a int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(a), 9))
			for i := 0; i < each; i++ {
				recs := testRecords(rng, 2, 100)
				first, err := s.Append(ctx, recs...)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for k := uint64(0); k < 2; k++ {
					if seen[first+k] {
						t.Errorf("seq %d handed out twice", first+k)
					}
					seen[first+k] = true
				}
				mu.Unlock()
			}
		}(a)
	}
	wg.Wait()
	if len(seen) != appenders*each*2 {
		t.Fatalf("%d distinct seqs, want %d", len(seen), appenders*each*2)
	}
	got := readAll(t, s.Spool, 1)
	if len(got) != len(seen) {
		t.Fatalf("read %d records", len(got))
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) || !payloadOK(r.Payload) {
			t.Fatalf("record %d: seq %d payload ok %v", i, r.Seq, payloadOK(r.Payload))
		}
	}
	// Fewer commits than Append calls shows group commit at work.
	commits := histogramCount(t, s, "bgpedge_buffer_commit_batch_records")
	if commits == 0 || commits >= appenders*each {
		t.Fatalf("%d commits for %d appends", commits, appenders*each)
	}
	t.Logf("%d appends in %d commits", appenders*each, commits)
}

func histogramCount(t testing.TB, s testSpool, name string) uint64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestMetricsLint(t *testing.T) {
	s := openTest(t, Options{})
	if _, err := s.Append(context.Background(), record.Record{Kind: record.KindBMP, Time: time.Now(), Payload: []byte("abc")}); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(s.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	n, err := testutil.GatherAndCount(s.reg)
	if err != nil || n < 12 {
		t.Fatalf("gathered %d series, %v", n, err)
	}
	if v := testutil.ToFloat64(s.m.appended); v != 1 {
		t.Fatalf("appended counter %v", v)
	}
	for _, name := range []string{"bgpedge_buffer_records", "bgpedge_buffer_oldest_record_age_seconds"} {
		if !strings.Contains(gatherText(t, s), name) {
			t.Fatalf("%s missing", name)
		}
	}
}

func gatherText(t testing.TB, s testSpool) string {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		b.WriteString(mf.String())
	}
	return b.String()
}

func TestSecondOpenIsInUse(t *testing.T) {
	s := openTest(t, Options{})
	for _, ro := range []bool{false, true} {
		if _, err := Open(Options{Dir: s.opts.Dir, ReadOnly: ro}); !errors.Is(err, ErrInUse) {
			t.Fatalf("second open (read-only %v): %v", ro, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"defaults", func(*Config) {}, ""},
		{"empty dir", func(c *Config) { c.Dir = "" }, "buffer.dir:"},
		{"tiny segment", func(c *Config) { c.SegmentBytes = 1000 }, "buffer.segment_bytes:"},
		{"budget below two segments", func(c *Config) { c.MaxBytes = c.SegmentBytes }, "buffer.max_bytes:"},
		{"short max age", func(c *Config) { c.MaxAge = time.Second }, "buffer.max_age:"},
		{"unknown policy", func(c *Config) { c.Policy = "drop-newest" }, "buffer.policy:"},
		{"zero batch", func(c *Config) { c.BatchRecords = 0 }, "buffer.batch_records:"},
		{"tiny batch bytes", func(c *Config) { c.BatchBytes = 10 }, "buffer.batch_bytes:"},
		{"long delay", func(c *Config) { c.MaxDelay = time.Minute }, "buffer.max_delay:"},
		{"drop-oldest with age", func(c *Config) { c.Policy = PolicyDropOldest; c.MaxAge = time.Hour }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.modify(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if o := c.Options(nil, nil); o.Dir != c.Dir || o.MaxBytes != c.MaxBytes || o.Policy != c.Policy {
					t.Fatalf("options %+v do not match config", o)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one naming %s", err, tt.want)
			}
		})
	}
}

// TestReadNeverAheadOfDurable: a block is visible in bbolt from its commit,
// before the fdatasync that makes it durable. A reader that acknowledges all
// it reads, as the forwarder does, must never get a seq whose Append has not
// returned: such a record may vanish in a power cut and its seq be reused.
func TestReadNeverAheadOfDurable(t *testing.T) {
	s := openTest(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readErr := make(chan error, 1)
	go func() {
		for from := uint64(1); ; {
			recs, err := s.Read(ctx, from, 4096)
			if err != nil {
				if errors.Is(err, context.Canceled) {
					err = nil
				}
				readErr <- err
				return
			}
			from = recs[len(recs)-1].Seq + 1
			if err := s.AckThrough(from - 1); err != nil {
				readErr <- err
				return
			}
		}
	}()
	recs := testRecords(rand.New(rand.NewPCG(8, 8)), 100, 200)
	var last uint64
	for i := 0; i < 300; i++ {
		first, err := s.Append(ctx, recs...)
		if err != nil {
			t.Fatal(err)
		}
		last = first + uint64(len(recs)) - 1
	}
	testenvEventually(t, "reader acknowledges everything", func() bool { return s.FirstUnacked() > last })
	cancel()
	if err := <-readErr; err != nil {
		t.Fatalf("reader: %v", err)
	}
	// The bound itself, without timing: a read up to an end below the last
	// committed block stops there.
	s2 := openTest(t, Options{})
	for i := 0; i < 3; i++ {
		if _, err := s2.Append(context.Background(), recs...); err != nil {
			t.Fatal(err)
		}
	}
	s2.mu.Lock()
	seg := s2.segs[len(s2.segs)-1]
	s2.mu.Unlock()
	got, err := s2.readSegment(seg, 1, 201, 1000)
	if err != nil || len(got) != 200 || got[199].Seq != 200 {
		t.Fatalf("read bounded by end 201: %d records, %v", len(got), err)
	}
}

// TestFirstSeq: a spool created with FirstSeq starts there and counts
// nothing below it; once it has segments, it goes on from its own seqs
// whatever FirstSeq a later Open passes.
func TestFirstSeq(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 3))
	ctx := context.Background()
	const base = 1_795_000_000_000_000
	s := openTest(t, Options{Dir: dir, FirstSeq: base})
	if got := s.FirstUnacked(); got != base {
		t.Fatalf("new spool: first unacked %d, want %d", got, base)
	}
	first, err := s.Append(ctx, testRecords(rng, 5, 100)...)
	if err != nil {
		t.Fatal(err)
	}
	if first != base {
		t.Fatalf("first append got seq %d, want %d", first, base)
	}
	if st := s.Stats(); st.Records != 5 || st.FirstSeq != base || st.LastSeq != base+4 {
		t.Fatalf("stats %+v; want 5 records %d..%d", st, base, base+4)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, fs := range []uint64{0, 1, base + 1_000_000} {
		s = openTest(t, Options{Dir: dir, FirstSeq: fs})
		if got := readAll(t, s.Spool, 1); len(got) != 5 || got[0].Seq != base {
			t.Fatalf("reopen with FirstSeq %d: %d records; want 5 from seq %d", fs, len(got), base)
		}
		next, err := s.Append(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if next != base+5 {
			t.Fatalf("reopen with FirstSeq %d: next seq %d, want %d", fs, next, base+5)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := SeqFromClock(time.UnixMicro(base)), uint64(base); got != want {
		t.Fatalf("SeqFromClock = %d, want %d", got, want)
	}
	if got := SeqFromClock(time.Unix(0, 0)); got != 1 {
		t.Fatalf("SeqFromClock(epoch) = %d, want 1", got)
	}

	// A directory holding only segments set aside by an earlier run: their
	// seqs stay taken, whatever FirstSeq says.
	qdir := t.TempDir()
	if err := os.WriteFile(filepath.Join(qdir, segmentName(1000)+quarantineSuffix), make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Options{Dir: qdir, FirstSeq: 2})
	if next, err := s.Append(ctx); err != nil || next < 1000+4096 {
		t.Fatalf("spool beside a quarantined segment of seqs from 1000: next seq %d (%v), want at least %d", next, err, 1000+4096)
	}
}

// TestStatsOldestTime checks the receive time of the first unacknowledged
// record that Stats (the oldest-age gauge, on every scrape) reads in place,
// across blocks of several chunks and several segments, and that reading it
// leaves the reader's block cache alone.
func TestStatsOldestTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	s := openTest(t, Options{SegmentBytes: 1 << 20})
	ctx := context.Background()
	var want []record.Record
	for i := 0; i < 30; i++ {
		recs := testRecords(rng, 10+rng.IntN(200), 10+rng.IntN(3000))
		for j := range recs {
			recs[j].Time = time.Unix(1_700_000_000+int64(len(want)+j), 0)
		}
		if i == 7 {
			recs[0].Time = time.Time{}
		}
		if _, err := s.Append(ctx, recs...); err != nil {
			t.Fatal(err)
		}
		want = append(want, recs...)
	}
	if st := s.Stats(); st.Segments < 2 {
		t.Fatalf("only %d segments; the test needs several", st.Segments)
	}
	// A partial read of the last block keeps it decoded for the next read;
	// reading the oldest time, in the first block, must not replace it.
	last := uint64(len(want)) - 5
	if recs, err := s.Read(ctx, last, 1); err != nil || len(recs) != 1 {
		t.Fatalf("read: %d records, %v", len(recs), err)
	}
	s.cacheMu.Lock()
	cached := s.cache
	s.cacheMu.Unlock()
	if cached.seg == nil {
		t.Fatal("no block cached after a partial read")
	}
	_ = s.Stats()
	s.cacheMu.Lock()
	if s.cache.seg != cached.seg || s.cache.first != cached.first || len(s.cache.recs) != len(cached.recs) {
		t.Fatalf("Stats replaced the reader's block cache")
	}
	s.cacheMu.Unlock()
	acked := uint64(0)
	for acked < uint64(len(want)) {
		st := s.Stats()
		if w := want[acked].Time; !st.OldestTime.Equal(w) || st.FirstSeq != acked+1 {
			t.Fatalf("acked through %d: oldest %v (first seq %d), want %v", acked, st.OldestTime, st.FirstSeq, w)
		}
		if again := s.Stats(); !again.OldestTime.Equal(st.OldestTime) {
			t.Fatalf("acked through %d: second Stats %v, first %v", acked, again.OldestTime, st.OldestTime)
		}
		acked = min(uint64(len(want)), acked+1+uint64(rng.IntN(150)))
		if err := s.AckThrough(acked); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.counts(); st.Records != 0 {
		t.Fatalf("records left: %d", st.Records)
	}
}
