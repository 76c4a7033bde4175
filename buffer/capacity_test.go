package buffer

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fill appends until the block policy makes Append wait, and returns the
// last seq stored.
func fill(t *testing.T, s testSpool, rng *rand.Rand) uint64 {
	t.Helper()
	var last uint64
	for i := 0; ; i++ {
		if i > 10_000 {
			t.Fatal("spool never filled up")
		}
		before := testutil.ToFloat64(s.m.blocked)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		recs := testRecords(rng, 4, 1000)
		go func() {
			first, err := s.Append(ctx, recs...)
			if err == nil {
				last = first + 3
			}
			done <- err
		}()
		var err error
		returned := false
		testenvEventually(t, "append returns or blocks", func() bool {
			select {
			case err = <-done:
				returned = true
				return true
			default:
				return testutil.ToFloat64(s.m.blocked) > before
			}
		})
		if !returned {
			cancel()
			// Space may have been freed just as the append began to wait
			// (deletion of acknowledged segments is asynchronous).
			if err = <-done; err == nil {
				continue
			}
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled blocked append returned %v", err)
			}
			return last
		}
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestPolicyBlock(t *testing.T) {
	const segBytes, maxBytes = 32 << 10, 160 << 10
	s := openTest(t, Options{SegmentBytes: segBytes, MaxBytes: maxBytes, Policy: PolicyBlock})
	rng := rand.New(rand.NewPCG(5, 5))
	last := fill(t, s, rng)
	if b := s.counts().Bytes; b < maxBytes {
		t.Fatalf("blocked at %d bytes, below the %d budget", b, maxBytes)
	}

	// A waiting Append returns once acknowledgements free a segment.
	blockedBefore := testutil.ToFloat64(s.m.blocked)
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(context.Background(), testRecords(rng, 1, 100)...)
		done <- err
	}()
	testenvEventually(t, "append waits for space", func() bool { return testutil.ToFloat64(s.m.blocked) > blockedBefore })
	select {
	case err := <-done:
		t.Fatalf("append did not wait: %v", err)
	default:
	}
	if err := s.AckThrough(last); err != nil {
		t.Fatal(err)
	}
	var err error
	testenvEventually(t, "append proceeds after acks", func() bool {
		select {
		case err = <-done:
			return true
		default:
			return false
		}
	})
	if err != nil {
		t.Fatalf("append after acks: %v", err)
	}
	if testutil.ToFloat64(s.m.dropped.WithLabelValues(dropCapacity)) != 0 {
		t.Fatal("policy block dropped records")
	}

	// Close releases appenders still waiting.
	fill(t, s, rng)
	blockedBefore = testutil.ToFloat64(s.m.blocked)
	go func() {
		_, err := s.Append(context.Background(), testRecords(rng, 1, 100)...)
		done <- err
	}()
	testenvEventually(t, "append waits again", func() bool { return testutil.ToFloat64(s.m.blocked) > blockedBefore })
	_ = s.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting append after close: %v", err)
	}
}

func TestPolicyDropOldest(t *testing.T) {
	const segBytes, maxBytes = 32 << 10, 128 << 10
	s := openTest(t, Options{SegmentBytes: segBytes, MaxBytes: maxBytes, Policy: PolicyDropOldest})
	rng := rand.New(rand.NewPCG(6, 6))
	ctx := context.Background()
	var appended, last uint64
	var peak int64
	for i := 0; i < 300; i++ {
		first, err := s.Append(ctx, testRecords(rng, 3, 1000)...)
		if err != nil {
			t.Fatal(err)
		}
		appended += 3
		last = first + 2
		peak = max(peak, dirBytes(t, s.opts.Dir))
	}
	// Capacity is enforced right after each commit; an observer can see at
	// most one segment more, briefly.
	if peak > maxBytes+segBytes {
		t.Fatalf("disk use peaked at %d, budget %d", peak, maxBytes)
	}
	// Once the spool's own accounting is within budget, nothing more is dropped.
	testenvEventually(t, "disk use within budget", func() bool {
		return s.counts().Bytes <= maxBytes && dirBytes(t, s.opts.Dir) <= maxBytes
	})

	first := s.FirstUnacked()
	recs := readAll(t, s.Spool, 1)
	if len(recs) == 0 {
		t.Fatalf("nothing kept (first unacked %d, last appended %d)\n%s", first, last, s.logs)
	}
	if recs[0].Seq != first || recs[len(recs)-1].Seq != last {
		t.Fatalf("kept %d records %d..%d (first unacked %d, last appended %d)", len(recs), recs[0].Seq, recs[len(recs)-1].Seq, first, last)
	}
	for i, r := range recs {
		if r.Seq != first+uint64(i) || !payloadOK(r.Payload) {
			t.Fatalf("kept record %d: seq %d intact %v", i, r.Seq, payloadOK(r.Payload))
		}
	}
	dropped := uint64(testutil.ToFloat64(s.m.dropped.WithLabelValues(dropCapacity)))
	if dropped == 0 || dropped != appended-uint64(len(recs)) {
		t.Fatalf("dropped counter %d, but %d appended and %d kept", dropped, appended, len(recs))
	}
	if n := strings.Count(s.logs.String(), "spool dropped unacknowledged records"); n == 0 {
		t.Fatal("drops not logged")
	}
	if st := s.Stats(); st.Records != uint64(len(recs)) {
		t.Fatalf("stats records %d, kept %d", st.Records, len(recs))
	}
}

func TestMaxAge(t *testing.T) {
	s := openTest(t, Options{SegmentBytes: 32 << 10, MaxAge: 100 * time.Millisecond})
	rng := rand.New(rand.NewPCG(8, 8))
	for i := 0; i < 20; i++ {
		if _, err := s.Append(context.Background(), testRecords(rng, 5, 1000)...); err != nil {
			t.Fatal(err)
		}
	}
	testenvEventually(t, "old records dropped", func() bool { return s.counts().Records == 0 })
	if d := testutil.ToFloat64(s.m.dropped.WithLabelValues(dropAge)); d != 100 {
		t.Fatalf("dropped by age %v, want 100", d)
	}
	first, err := s.Append(context.Background(), testRecords(rng, 1, 10)...)
	if err != nil || first != 101 {
		t.Fatalf("append after age drop: %d, %v", first, err)
	}
	if f := s.FirstUnacked(); f != 101 {
		t.Fatalf("first unacked %d", f)
	}
}

// TestAppendReservedOnFullSpool: records bgpedge makes itself at start (the
// synthetic peer-downs of a crashed run) must not wait for space that only a
// later start-up step frees. AppendReserved takes them on a spool that makes
// Append wait, up to the reserve beyond the budget, and waits only past that.
func TestAppendReservedOnFullSpool(t *testing.T) {
	const segBytes, maxBytes = 32 << 10, 160 << 10
	s := openTest(t, Options{SegmentBytes: segBytes, MaxBytes: maxBytes, Policy: PolicyBlock})
	rng := rand.New(rand.NewPCG(15, 15))
	fill(t, s, rng)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.AppendReserved(ctx, testRecords(rng, 4, 100)...); err != nil {
		t.Fatalf("reserved append on a full spool: %v", err)
	}
	limit := int64(maxBytes) + ReserveBytes(maxBytes)
	for i := 0; ; i++ {
		if i > 10_000 {
			t.Fatal("reserved appends never waited")
		}
		blocked := testutil.ToFloat64(s.m.blocked)
		actx, acancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := s.AppendReserved(actx, testRecords(rng, 16, 1000)...)
		acancel()
		if err == nil {
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) || testutil.ToFloat64(s.m.blocked) == blocked {
			t.Fatalf("reserved append: %v (blocked counter %v)", err, testutil.ToFloat64(s.m.blocked))
		}
		break
	}
	if b := s.counts().Bytes; b < limit {
		t.Fatalf("reserved appends waited at %d bytes, below budget + reserve %d", b, limit)
	}
	if d := testutil.ToFloat64(s.m.dropped.WithLabelValues(dropCapacity)); d != 0 {
		t.Fatalf("%v records dropped", d)
	}
}
