package pipeline

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// TestBMPEncoderParallelMatchesSequential holds the BMP encoder to the
// contract the forwarder's parallel encoding relies on (forwarder.Parallel):
// records that are not Ordered, encoded at once on several goroutines
// between Ordered ones, give byte for byte what one goroutine gives in spool
// order. Every shared capture is replayed as routers of their own, their
// records interleaved as several sessions spool them. Under -race it also
// catches state the encoder shares without a lock.
func TestBMPEncoderParallelMatchesSequential(t *testing.T) {
	var recs []record.Record
	for ci, path := range testenv.BMPCaptures(t, 10) {
		if strings.HasSuffix(path, ".gz") {
			continue // the 300,000-message dump: benchmarks replay it
		}
		streams, err := bmp.LoadReplayFile(path)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(path), err)
		}
		for si, data := range streams {
			source := fmt.Sprintf("192.0.2.%d:%d", ci+1, 1000+si)
			f := bmp.NewFramer(bytes.NewReader(data), bmp.MaxMessageBytesLimit, 64<<10)
			for {
				msg, err := f.Next()
				if err != nil {
					break
				}
				recs = append(recs, record.Record{Kind: record.KindBMP, Key: []byte(source), Source: source,
					Time: time.Unix(1700000000, 0), Payload: bytes.Clone(msg)})
			}
		}
	}
	// Interleave the routers in runs, like sessions spooling batches at once.
	recs = interleave(recs, 7)
	for i := range recs {
		recs[i].Seq = uint64(i + 1)
	}
	if len(recs) < 1000 {
		t.Fatalf("only %d messages in the captures", len(recs))
	}

	encode := func(parallel int) map[uint64][]record.Output {
		enc, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: bmp.DefaultEncoding(), AgentID: "a1", Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		defer enc.Close()
		p := bmpEncoder(&encodingForwarder{enc: enc}).(forwarder.Parallel)
		var mu sync.Mutex
		out := make(map[uint64][]record.Output, len(recs))
		one := func(rec record.Record) {
			var msgs []record.Output
			if err := p.Encode(rec, func(m record.Output) { msgs = append(msgs, m) }); err != nil {
				msgs = append(msgs, record.Output{Stream: "error", Value: []byte(err.Error())})
			}
			mu.Lock()
			out[rec.Seq] = msgs
			mu.Unlock()
		}
		// Within a run any order is allowed: encode it backwards, the
		// order most likely to expose a record that needs an earlier one.
		run := func(run []record.Record) {
			var wg sync.WaitGroup
			for w := range parallel {
				wg.Go(func() {
					for i := len(run) - 1 - w; i >= 0; i -= parallel {
						one(run[i])
					}
				})
			}
			wg.Wait()
		}
		lo := 0
		ordered := 0
		for i, rec := range recs {
			if p.Ordered(rec) {
				run(recs[lo:i])
				one(rec)
				lo = i + 1
				ordered++
			}
		}
		run(recs[lo:])
		if ordered == 0 || ordered == len(recs) {
			t.Fatalf("%d of %d records ordered: the captures should have Peer Ups and routes", ordered, len(recs))
		}
		return out
	}
	want, got := encode(1), encode(4)
	for _, rec := range recs {
		w, g := want[rec.Seq], got[rec.Seq]
		if len(w) != len(g) {
			t.Fatalf("record %d (%s): %d messages in parallel, %d in sequence", rec.Seq, rec.Source, len(g), len(w))
		}
		for i := range w {
			if w[i].Stream != g[i].Stream || w[i].Index != g[i].Index || !bytes.Equal(w[i].Key, g[i].Key) || !bytes.Equal(w[i].Value, g[i].Value) {
				t.Fatalf("record %d (%s) message %d differs:\nsequence: %s %s\nparallel: %s %s", rec.Seq, rec.Source, i, w[i].Stream, w[i].Value, g[i].Stream, g[i].Value)
			}
		}
	}
}

// interleave takes runs of up to n records from each source in turn,
// keeping each source's order.
func interleave(recs []record.Record, n int) []record.Record {
	var order []string
	by := map[string][]record.Record{}
	for _, r := range recs {
		if _, ok := by[r.Source]; !ok {
			order = append(order, r.Source)
		}
		by[r.Source] = append(by[r.Source], r)
	}
	out := make([]record.Record, 0, len(recs))
	for len(out) < len(recs) {
		for _, s := range order {
			k := min(n, len(by[s]))
			out = append(out, by[s][:k]...)
			by[s] = by[s][k:]
		}
	}
	return out
}
