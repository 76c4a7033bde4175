//go:build linux

package buffer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/record"
)

// Benchmarks report records/s; scripts/bench-buffer.sh runs them and prints
// the spool against a plain append-and-fdatasync file at the same batch size
// (the same encoded bytes, one write and one fdatasync per batch).
//
//	appenders=1:  one caller appending 1000 records per call (a BMP session's
//	              batch); the plain file syncs every 1000 records.
//	appenders=64: 64 callers appending 16 records per call, group-committed;
//	              the plain file syncs every 1024 records (64 x 16), the most
//	              the spool can coalesce from them.
var benchCases = []struct {
	size, appenders, perCall int
}{
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
func BenchmarkAppend(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(fmt.Sprintf("size=%d/appenders=%d", bc.size, bc.appenders), func(b *testing.B) {
			reg := prometheus.NewRegistry()
			s, err := Open(Options{Dir: b.TempDir(), Registerer: reg})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
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
			const rounds = 10
			callsPerRound := max(1, b.N/rounds/bc.perCall)
			writesPerRound := max(1, callsPerRound*bc.perCall/plainBatch)
			var spoolTime, plainTime time.Duration
			var spoolRecs, plainRecs int
			b.SetBytes(int64(bc.size))
			b.ResetTimer()
			for round := 0; round < rounds; round++ {
				start := time.Now()
				work := make(chan struct{}, callsPerRound)
				for i := 0; i < callsPerRound; i++ {
					work <- struct{}{}
				}
				close(work)
				var wg sync.WaitGroup
				for a := 0; a < bc.appenders; a++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range work {
							if _, err := s.Append(context.Background(), recs...); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				spoolTime += time.Since(start)
				spoolRecs += callsPerRound * bc.perCall

				start = time.Now()
				for i := 0; i < writesPerRound; i++ {
					if _, err := f.Write(plainBuf); err != nil {
						b.Fatal(err)
					}
					if err := syscall.Fdatasync(int(f.Fd())); err != nil {
						b.Fatal(err)
					}
				}
				plainTime += time.Since(start)
				plainRecs += writesPerRound * plainBatch
			}
			b.StopTimer()
			sp := float64(spoolRecs) / spoolTime.Seconds()
			pl := float64(plainRecs) / plainTime.Seconds()
			b.ReportMetric(sp, "rec/s")
			b.ReportMetric(pl, "plain-rec/s")
			b.ReportMetric(sp/pl, "ratio")
			commits := sampleCount(reg, "bgpedge_buffer_commit_batch_records")
			b.ReportMetric(float64(spoolRecs)/float64(max(commits, 1)), "rec/commit")
		})
	}
}

func sampleCount(reg *prometheus.Registry, name string) uint64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// BenchmarkReadAck drains a pre-filled spool 1000 records at a time,
// acknowledging each batch, as the forwarder does.
func BenchmarkReadAck(b *testing.B) {
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
