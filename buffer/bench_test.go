//go:build linux

package buffer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/bgpedge/bgpedge/internal/gctune"
	"github.com/bgpedge/bgpedge/record"
)

// Benchmarks report records/s; scripts/bench-buffer.sh runs them and prints
// the spool against a plain append-and-fdatasync file at the same batch size
// (the same encoded bytes, one write and one fdatasync per batch), and
// against bbolt alone storing those bytes the way the spool does (boltFloor).
//
//	appenders=1:  one caller appending 1000 records per call (a BMP session's
//	              batch); the plain file syncs every 1000 records.
//	appenders=64: 64 callers appending 16 records per call, group-committed;
//	              the plain file syncs every 1024 records (64 x 16), the most
//	              the spool can coalesce from them.
type benchCase struct{ size, appenders, perCall int }

var benchCases = []benchCase{
	{200, 1, 1000}, {200, 64, 16}, {1024, 1, 1000}, {1024, 64, 16},
}

func benchRecords(size, n int) []record.Record {
	rng := rand.New(rand.NewPCG(uint64(size), uint64(n)))
	recs := make([]record.Record, n)
	now := time.Now()
	for i := range recs {
		recs[i] = record.Record{Kind: record.KindBMP, Key: []byte{192, 0, 2, 1}, Time: now, Source: "192.0.2.1", Payload: payload(rng, size)}
	}
	return recs
}

// BenchmarkAppend measures the spool and the plain file in alternating
// rounds of the same size, so both see the same disk and the same load from
// whatever else runs on the machine; the ratio is what to read.
//
//	drain=none:   nothing is acknowledged; every commit appends to the file
//	              (a spool filling while Kafka is down).
//	drain=reader: a reader reads and acknowledges everything as it arrives,
//	              as the forwarder does while Kafka keeps up; commits reuse
//	              the pages of acknowledged blocks.
func BenchmarkAppend(b *testing.B) {
	binaryGC(b)
	for _, bc := range benchCases {
		for _, drain := range []string{"none", "ack", "reader"} {
			b.Run(fmt.Sprintf("size=%d/appenders=%d/drain=%s", bc.size, bc.appenders, drain), func(b *testing.B) { benchAppend(b, bc, drain) })
		}
	}
}

func benchAppend(b *testing.B, bc benchCase, drain string) {
	reg := prometheus.NewRegistry()
	s, err := Open(Options{Dir: b.TempDir(), Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if drain == "reader" {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		defer func() { cancel(); <-done }()
		go func() {
			defer close(done)
			for from := uint64(1); ; {
				recs, err := s.Read(ctx, from, 4096)
				if err != nil || len(recs) == 0 {
					return
				}
				from = recs[len(recs)-1].Seq + 1
				if err := s.AckThrough(from - 1); err != nil {
					return
				}
			}
		}()
	}
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "plain"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	recs := benchRecords(bc.size, bc.perCall)
	plainBatch := bc.perCall * bc.appenders
	plainBuf, err := appendChunk(nil, benchRecords(bc.size, plainBatch))
	if err != nil {
		b.Fatal(err)
	}
	var grouped *group
	if bc.appenders > 1 {
		grouped = newGroup(plainBatch, newPlainFile(b, "grouped"))
		defer grouped.close()
	}
	// Without a reader, bbolt alone is measured too (boltFloor): by one
	// caller with the plain file's batch, or by the same appenders through
	// the same group commit as the grouped plain file.
	var floor *boltFloor
	var floorGroup *group
	if drain != "reader" {
		floor = newBoltFloor(b, drain == "ack")
		defer floor.close()
		if bc.appenders > 1 {
			floorGroup = newGroup(plainBatch, floor.commit)
			defer floorGroup.close()
		}
	}
	const rounds = 10
	callsPerRound := max(1, b.N/rounds/bc.perCall)
	writesPerRound := max(1, callsPerRound*bc.perCall/plainBatch)
	var spoolTime, plainWrite, plainSync, groupedTime, floorTime time.Duration
	var spoolRecs, plainRecs int
	chunk, err := appendChunk(nil, recs)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(bc.size))
	b.ResetTimer()
	for round := 0; round < rounds; round++ {
		spoolTime += runAppenders(b, bc.appenders, callsPerRound, func() error {
			first, err := s.Append(context.Background(), recs...)
			if err == nil && drain == "ack" {
				err = s.AckThrough(first + uint64(len(recs)) - 1)
			}
			return err
		})
		spoolRecs += callsPerRound * bc.perCall

		for i := 0; i < writesPerRound; i++ {
			start := time.Now()
			if _, err := f.Write(plainBuf); err != nil {
				b.Fatal(err)
			}
			synced := time.Now()
			if err := syscall.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
			plainWrite += synced.Sub(start)
			plainSync += time.Since(synced)
		}
		plainRecs += writesPerRound * plainBatch

		if grouped != nil {
			groupedTime += runAppenders(b, bc.appenders, callsPerRound, func() error {
				return grouped.append(chunk, len(recs))
			})
		}

		switch {
		case floorGroup != nil:
			floorTime += runAppenders(b, bc.appenders, callsPerRound, func() error {
				return floorGroup.append(chunk, len(recs))
			})
		case floor != nil:
			start := time.Now()
			for i := 0; i < writesPerRound; i++ {
				if err := floor.commit(plainBuf); err != nil {
					b.Fatal(err)
				}
			}
			floorTime += time.Since(start)
		}
	}
	b.StopTimer()
	sp := float64(spoolRecs) / spoolTime.Seconds()
	pl := float64(plainRecs) / (plainWrite + plainSync).Seconds()
	b.ReportMetric(sp, "rec/s")
	b.ReportMetric(pl, "plain-rec/s")
	b.ReportMetric(sp/pl, "ratio")
	ref := pl // the plain file the bbolt floor is compared with
	if grouped != nil {
		gr := float64(spoolRecs) / groupedTime.Seconds()
		b.ReportMetric(gr, "grouped-rec/s")
		b.ReportMetric(sp/gr, "grouped-ratio")
		ref = gr
	}
	if floor != nil {
		fl := float64(plainRecs) / floorTime.Seconds()
		if floorGroup != nil {
			fl = float64(spoolRecs) / floorTime.Seconds()
		}
		b.ReportMetric(fl, "bolt-rec/s")
		b.ReportMetric(fl/ref, "bolt-ratio")
		b.ReportMetric(sp/fl, "spool-bolt-ratio")
	}
	commits, _ := histogram(reg, "bgpedge_buffer_commit_batch_records")
	b.ReportMetric(float64(spoolRecs)/float64(max(commits, 1)), "rec/commit")
	// Where the time goes, per commit and per plain-file batch: the spool's
	// commit (bbolt transaction, its writes and the fdatasync) and its
	// fdatasync alone, against the plain file's write and fdatasync.
	writes := float64(rounds * writesPerRound)
	for _, h := range []struct{ metric, unit string }{
		{"bgpedge_buffer_commit_duration_seconds", "commit-µs"},
		{"bgpedge_buffer_sync_duration_seconds", "sync-µs"},
	} {
		n, sum := histogram(reg, h.metric)
		b.ReportMetric(sum/float64(max(n, 1))*1e6, h.unit)
	}
	b.ReportMetric(float64(plainWrite.Microseconds())/writes, "plain-write-µs")
	b.ReportMetric(float64(plainSync.Microseconds())/writes, "plain-sync-µs")
	b.ReportMetric(float64(s.Stats().Bytes)/(1<<20), "spool-MiB")
}

// runAppenders makes calls calls of fn from n goroutines and returns the
// elapsed time.
func runAppenders(b *testing.B, n, calls int, fn func() error) time.Duration {
	start := time.Now()
	work := make(chan struct{}, calls)
	for i := 0; i < calls; i++ {
		work <- struct{}{}
	}
	close(work)
	var wg sync.WaitGroup
	for a := 0; a < n; a++ {
		wg.Go(func() {
			for range work {
				if err := fn(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// group is the second reference for concurrent appenders: the same
// appenders and the same group commit as the spool (a single writer takes
// queued chunks up to the batch, waiting at most 2 ms and only while other
// appenders are on their way), then one write call for the whole batch: a
// plain file's write and fdatasync, or bbolt's transaction (boltFloor). The
// spool's ratio to the plain file grouped this way is the cost of bbolt and
// segments alone; coordinating 64 goroutines costs both sides the same.
type group struct {
	reqs     chan groupReq
	inflight atomic.Int64
	done     chan struct{}
}

type groupReq struct {
	chunk []byte
	n     int
	res   chan error
}

func newGroup(batch int, write func([]byte) error) *group {
	g := &group{reqs: make(chan groupReq, 1024), done: make(chan struct{})}
	go func() {
		defer close(g.done)
		var buf []byte
		var waiting []chan error
		for r := range g.reqs {
			buf, waiting = append(buf[:0], r.chunk...), append(waiting[:0], r.res)
			deadline := time.After(2 * time.Millisecond)
		gather:
			for n := r.n; n < batch && g.inflight.Load() > int64(len(waiting)); {
				select {
				case r, ok := <-g.reqs:
					if !ok {
						break gather
					}
					buf, waiting, n = append(buf, r.chunk...), append(waiting, r.res), n+r.n
				case <-deadline:
					break gather
				}
			}
			err := write(buf)
			for _, w := range waiting {
				w <- err
			}
		}
	}()
	return g
}

func (g *group) append(chunk []byte, n int) error {
	g.inflight.Add(1)
	defer g.inflight.Add(-1)
	res := make(chan error, 1)
	g.reqs <- groupReq{chunk: chunk, n: n, res: res}
	return <-res
}

func (g *group) close() {
	close(g.reqs)
	<-g.done
}

// newPlainFile returns the write of a plain append-only file: one write and
// one fdatasync per call.
func newPlainFile(b *testing.B, name string) func([]byte) error {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = f.Close() })
	return func(buf []byte) error {
		if _, err := f.Write(buf); err != nil {
			return err
		}
		return syscall.Fdatasync(int(f.Fd()))
	}
}

// boltFloor is the third reference: bbolt alone, with the spool's options
// and block layout (one sub-bucket per block, one transaction and one
// fdatasync per batch), storing the plain file's pre-encoded batch; with
// reclaim, each transaction also deletes the previous block, as the spool's
// commit deletes acknowledged blocks. It pays no encoding, no hand-off to a
// writer goroutine and no spool bookkeeping, so bolt/plain is the most a
// spool that stores its blocks this way can reach on this disk, and
// spool/bolt is what the spool's own code costs on top.
type boltFloor struct {
	db      *bolt.DB
	seq     uint64
	reclaim bool
}

func newBoltFloor(b *testing.B, reclaim bool) *boltFloor {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "floor"), 0o640, boltOptions(false))
	if err != nil {
		b.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket(bucketBlocks())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return &boltFloor{db: db, seq: 1, reclaim: reclaim}
}

// commit stores value as the next block. Blocks are keyed by a counter:
// the key's value changes nothing bbolt does.
func (f *boltFloor) commit(value []byte) error {
	err := f.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBlocks())
		bk.FillPercent = 1
		if f.reclaim && f.seq > 1 {
			if err := bk.DeleteBucket(seqKey(f.seq - 1)); err != nil {
				return err
			}
		}
		return putBlock(bk, f.seq, value)
	})
	if err != nil {
		return err
	}
	f.seq++
	return f.db.Sync()
}

func (f *boltFloor) close() { _ = f.db.Close() }

// binaryGC runs a benchmark with the garbage-collector settings of the
// bgpedge binary (internal/gctune), not the test binary's defaults.
func binaryGC(b *testing.B) {
	percent, limit := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1)
	debug.SetGCPercent(percent)
	gctune.Apply(os.Getenv)
	b.Cleanup(func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	})
}

// histogram returns the sample count and sum of a histogram in reg.
func histogram(reg *prometheus.Registry, name string) (uint64, float64) {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	return 0, 0
}

// BenchmarkReadAck drains a pre-filled spool 1000 records at a time,
// acknowledging each batch, as the forwarder does.
func BenchmarkReadAck(b *testing.B) {
	binaryGC(b)
	for _, size := range []int{200, 1024} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			s, err := Open(Options{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			recs := benchRecords(size, 1000)
			for n := 0; n < b.N; n += len(recs) {
				if _, err := s.Append(context.Background(), recs...); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			start := time.Now()
			ctx := context.Background()
			for from, n := uint64(1), 0; n < b.N; {
				got, err := s.Read(ctx, from, 1000)
				if err != nil {
					b.Fatal(err)
				}
				n += len(got)
				from = got[len(got)-1].Seq + 1
				if err := s.AckThrough(from - 1); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "rec/s")
		})
	}
}

// BenchmarkOpenVerify measures Open on a spool holding a 256 MiB backlog:
// every segment is verified completely (bbolt structure, every block CRC).
// The files are in the page cache, as after a process restart.
func BenchmarkOpenVerify(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	recs := benchRecords(1024, 1000)
	const backlog = 256 << 20
	for n := 0; n < backlog; n += len(recs) * 1024 {
		if _, err := s.Append(context.Background(), recs...); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(backlog)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := Open(Options{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
