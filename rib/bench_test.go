package rib

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// dumpEvents encodes the 100k-route GoBGP dump with the BMP encoder (JSON
// only), per record, as the forwarder hands them to the stage.
func dumpEvents(b testing.TB) ([]record.Record, [][]*forwarder.Outgoing, int) {
	b.Helper()
	return captureEvents(b, filepath.Join(testenv.Shared(b, "bmpdata", "raw"), "gobgp-3.10-all-dump-100k.bmp.gz"))
}

// jsonEncoder is the BMP encoder as the agent runs it with the route
// state on: JSON events only.
func jsonEncoder(t testing.TB) *bmp.Encoder {
	t.Helper()
	enc := bmp.DefaultEncoding()
	enc.Raw = false
	e, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: enc, AgentID: testAgent, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// captureEvents encodes the first stream of a capture as the forwarder
// would (JSON only).
func captureEvents(b testing.TB, path string) ([]record.Record, [][]*forwarder.Outgoing, int) {
	b.Helper()
	streams, err := capture.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	e := jsonEncoder(b)
	defer e.Close()
	var recs []record.Record
	var msgs [][]*forwarder.Outgoing
	events := 0
	fr := bmp.NewFramer(bytes.NewReader(streams[0].Data), bmp.MaxMessageBytesLimit, 0)
	for {
		m, err := fr.Next()
		if err != nil {
			break
		}
		rec := record.Record{Seq: uint64(len(recs) + 1), Kind: record.KindBMP, Source: "192.0.2.1:179",
			Time: time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC), Payload: bytes.Clone(m)}
		var out []*forwarder.Outgoing
		if err := e.Encode(rec, func(o bmp.Output) {
			out = append(out, &forwarder.Outgoing{Seq: rec.Seq, Index: o.Index, Stream: o.Stream, Key: o.Key, Value: o.Value})
		}); err != nil {
			b.Fatal(err)
		}
		for _, o := range out {
			if bytes.HasPrefix(o.Value, routeEventPrefix) {
				events++
			}
		}
		recs, msgs = append(recs, rec), append(msgs, out)
	}
	return recs, msgs, events
}

// BenchmarkStage feeds the dump's route events through Sequence in read
// batches of 2,048 records and commits after every batch: the stage's own
// cost per route event, every route new (the first run) and every route a
// duplicate (the same table sent again, over the committed state). The
// forwarder commits from its ack ticker, every 100 ms, while it sequences:
// new-acks does that.
func BenchmarkStage(b *testing.B) {
	recs, msgs, events := dumpEvents(b)
	for _, bc := range []struct {
		name         string
		resend, acks bool
	}{{"new", false, false}, {"resend", true, false}, {"new-acks", false, true}} {
		b.Run(bc.name, func(b *testing.B) {
			var before, after runtime.MemStats
			var ru0, ru1 syscall.Rusage
			var cpu time.Duration
			var mallocs, alloced, gcs uint64
			for range b.N {
				b.StopTimer()
				s := openBench(b)
				if bc.resend {
					feedStage(b, s, recs, msgs, 0, nil)
				}
				runtime.GC()
				runtime.ReadMemStats(&before)
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
				b.StartTimer()
				if bc.acks {
					feedStageAcks(b, s, recs, msgs)
				} else {
					feedStage(b, s, recs, msgs, uint64(len(recs))*boolU(bc.resend), nil)
				}
				b.StopTimer()
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
				runtime.ReadMemStats(&after)
				cpu += time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
				mallocs += after.Mallocs - before.Mallocs
				alloced += after.TotalAlloc - before.TotalAlloc
				gcs += uint64(after.NumGC - before.NumGC)
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
			}
			n := float64(events * b.N)
			b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/event")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/event")
			b.ReportMetric(float64(mallocs)/n, "allocs/event")
			b.ReportMetric(float64(alloced)/n, "B/event")
			b.ReportMetric(float64(gcs)/float64(b.N), "gc/op")
		})
	}
}

func boolU(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// feedStage sequences every record (seqs shifted by off, values rewritten
// by rewrite unless nil) in batches of 2,048 and commits each batch.
func feedStage(b *testing.B, s *Stage, recs []record.Record, msgs [][]*forwarder.Outgoing, off uint64, rewrite func([]byte) []byte) {
	b.Helper()
	const batch = 2048
	emit := func(*forwarder.Outgoing) error { return nil }
	for lo := 0; lo < len(recs); lo += batch {
		hi := min(lo+batch, len(recs))
		for i := lo; i < hi; i++ {
			rec := recs[i]
			rec.Seq += off
			ms := msgs[i]
			if rewrite != nil {
				ms = make([]*forwarder.Outgoing, len(msgs[i]))
				for j, m := range msgs[i] {
					x := *m
					x.Value = rewrite(m.Value)
					ms[j] = &x
				}
			}
			if err := s.Sequence(rec, ms, emit); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.CommitThrough(recs[hi-1].Seq + off); err != nil {
			b.Fatal(err)
		}
	}
}

// feedStageAcks sequences every record while another goroutine commits
// what was sequenced every 100 ms, as the forwarder's ack ticker does with
// what the sink acknowledged; then commits the rest.
func feedStageAcks(b *testing.B, s *Stage, recs []record.Record, msgs [][]*forwarder.Outgoing) {
	b.Helper()
	var sequenced atomic.Uint64
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				errc <- nil
				return
			case <-tick.C:
			}
			if err := s.CommitThrough(sequenced.Load()); err != nil {
				errc <- err
				return
			}
		}
	}()
	emit := func(*forwarder.Outgoing) error { return nil }
	ahead := prefetchAhead(s, msgs)
	for i, rec := range recs {
		ahead(i)
		if err := s.Sequence(rec, msgs[i], emit); err != nil {
			b.Fatal(err)
		}
		sequenced.Store(rec.Seq)
	}
	close(stop)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	if err := s.CommitThrough(recs[len(recs)-1].Seq); err != nil {
		b.Fatal(err)
	}
}

// prefetchAhead returns a function to call before sequencing record i: it
// passes Prefetch the next 16 messages once Sequence is about to reach the
// end of what it was passed, as the forwarder does.
func prefetchAhead(s *Stage, msgs [][]*forwarder.Outgoing) func(i int) {
	var flat []*forwarder.Outgoing
	ends := make([]int, len(msgs))
	for i, ms := range msgs {
		flat = append(flat, ms...)
		ends[i] = len(flat)
	}
	fetched := 0
	return func(i int) {
		if ends[i] > fetched {
			from := fetched
			fetched = min(len(flat), max(ends[i], fetched+16))
			s.Prefetch(flat[from:fetched])
		}
	}
}

// BenchmarkStageScale holds the dump's routes COPIES times over (env
// RIB_SCALE_COPIES, default 3), each copy from another router, so
// 300,003 × COPIES routes: the state file's size per route and the peak
// anonymous memory of the process (RssAnon, sampled every 50 ms; the
// file's pages are file-backed and counted apart) while it grows, and
// before (base: the benchmark's own copy of the dump's events).
func BenchmarkStageScale(b *testing.B) {
	copies := 3
	if v := os.Getenv("RIB_SCALE_COPIES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("RIB_SCALE_COPIES=%q: want a positive number", v)
		}
		copies = n
	}
	recs, msgs, events := dumpEvents(b)
	for i := range recs {
		recs[i].Payload = nil // the stage reads only the events
	}
	// Little headroom for garbage over the benchmark's own copy of the
	// events (about 200 MiB), so that the peak shows the stage's memory.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	for range b.N {
		dir := b.TempDir()
		s := openTest(b, dir, DuplicatesDrop)
		var peak atomic.Int64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				if kb := rssAnonKiB(b); kb > peak.Load() {
					peak.Store(kb)
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		runtime.GC()
		base := rssAnonKiB(b)
		var ru0, ru1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		start := time.Now()
		from := []byte(`"router":"192.0.2.1"`)
		for c := range copies {
			to := fmt.Appendf(nil, `"router":"198.18.%d.%d"`, c/256, c%256)
			feedStage(b, s, recs, msgs, uint64(c*len(recs)), func(v []byte) []byte { return bytes.Replace(v, from, to, 1) })
		}
		elapsed := time.Since(start)
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		close(stop)
		<-sampled
		routes := testutilGauge(s.m.routes)
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dir, FileName))
		if err != nil {
			b.Fatal(err)
		}
		cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		b.ReportMetric(routes, "routes")
		b.ReportMetric(float64(fi.Size())/(1<<20), "file-MiB")
		b.ReportMetric(float64(fi.Size())/routes, "file-B/route")
		b.ReportMetric(float64(base)/1024, "base-RssAnon-MiB")
		b.ReportMetric(float64(peak.Load())/1024, "peak-RssAnon-MiB")
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(events*copies), "cpu-ns/event")
		b.ReportMetric(float64(events*copies)/elapsed.Seconds(), "events/s")
	}
}

// rssAnonKiB is the process's anonymous resident memory.
func rssAnonKiB(b *testing.B) int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}

// openBench opens a stage for a benchmark; RIB_PAGE_SIZE sets the file's
// page size (default: the OS's), RIB_COMMIT_OPS a fixed size of commit
// parts (default: sized by maxCommitNodes), RIB_OVERLAY_OPS the overlay's
// bound (default: maxOverlayOps).
func openBench(b *testing.B) *Stage {
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Duplicates = true, DuplicatesDrop
	ps, _ := strconv.Atoi(os.Getenv("RIB_PAGE_SIZE"))
	co, _ := strconv.Atoi(os.Getenv("RIB_COMMIT_OPS"))
	oo, _ := strconv.Atoi(os.Getenv("RIB_OVERLAY_OPS"))
	s, err := Open(Options{Config: cfg, Dir: b.TempDir(), AgentID: testAgent, pageSize: ps, maxCommitOps: co, maxOverlayOps: oo})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkParseRoute is the stage's reading of a route event alone, over
// the dump's events.
func BenchmarkParseRoute(b *testing.B) {
	_, msgs, _ := dumpEvents(b)
	var vals, keys [][]byte
	for _, ms := range msgs {
		for _, m := range ms {
			if bytes.HasPrefix(m.Value, routeEventPrefix) {
				vals, keys = append(vals, m.Value), append(keys, m.Key)
			}
			if len(vals) == 20000 {
				break
			}
		}
	}
	p := newParser()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, ok := p.route(vals[i%len(vals)], keys[i%len(vals)]); !ok {
			b.Fatal("not a route")
		}
	}
}
