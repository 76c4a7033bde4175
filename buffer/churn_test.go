package buffer

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/record"
)

// TestChurnDiskFollowsBacklog pushes 1 GiB through the spool while a reader
// acknowledges at the same rate, and samples the directory size after every
// append: disk use must stay within the unacknowledged backlog plus one
// segment (a single bbolt file would have grown past 1 GiB and stayed there).
func TestChurnDiskFollowsBacklog(t *testing.T) {
	t.Parallel() // waits on fsync; overlaps with the other slow tests
	const (
		recordBytes  = 64 << 10
		perAppend    = 64
		total        = 1 << 30
		segmentBytes = 32 << 20
		batchBytes   = 4 << 20
		// A segment rotates after the commit that crosses segmentBytes, so
		// it can hold one batch more; plus bbolt pages and headers.
		slack = batchBytes + 2<<20
	)
	s := openTest(t, Options{SegmentBytes: segmentBytes, BatchBytes: batchBytes})
	dir := s.opts.Dir
	rng := rand.New(rand.NewPCG(21, 21))
	pool := make([][]byte, 32)
	for i := range pool {
		pool[i] = payload(rng, recordBytes)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readErr := make(chan error, 1)
	go func() {
		from := uint64(1)
		for {
			recs, err := s.Read(ctx, from, 64)
			if err != nil {
				if errors.Is(err, context.Canceled) {
					err = nil
				}
				readErr <- err
				return
			}
			for _, r := range recs {
				if r.Seq != from || !payloadOK(r.Payload) {
					readErr <- errf("seq %d (want %d) intact %v", r.Seq, from, payloadOK(r.Payload))
					return
				}
				from++
			}
			if err := s.AckThrough(from - 1); err != nil {
				readErr <- err
				return
			}
		}
	}()

	start := time.Now()
	var worst, peak int64
	batch := make([]record.Record, perAppend)
	var last uint64
	for written := 0; written < total; written += perAppend * recordBytes {
		for i := range batch {
			batch[i] = record.Record{Kind: record.KindBMP, Key: []byte{10, 0, 0, 1}, Time: time.Now(), Payload: pool[rng.IntN(len(pool))]}
		}
		first, err := s.Append(ctx, batch...)
		if err != nil {
			t.Fatal(err)
		}
		last = first + perAppend - 1
		disk := dirBytes(t, dir)
		backlog := int64(last-s.counts().AckedThrough) * recordBytes
		peak = max(peak, disk)
		worst = max(worst, disk-backlog)
		if disk > backlog+segmentBytes+slack {
			t.Fatalf("after %d MiB: %d bytes on disk for a backlog of %d bytes", written>>20, disk, backlog)
		}
	}
	elapsed := time.Since(start)
	testenvEventually(t, "reader drains everything", func() bool { return s.FirstUnacked() > last })
	testenvEventually(t, "acknowledged segments deleted", func() bool { return dirBytes(t, dir) <= segmentBytes+slack })
	cancel()
	if err := <-readErr; err != nil {
		t.Fatalf("reader: %v", err)
	}
	t.Logf("1 GiB in %v (%.0f MiB/s); peak disk %d MiB; worst disk minus backlog %d MiB; after drain %d KiB",
		elapsed.Round(time.Millisecond), float64(total>>20)/elapsed.Seconds(), peak>>20, worst>>20, dirBytes(t, dir)>>10)
}
