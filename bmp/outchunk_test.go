package bmp_test

import (
	"bytes"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
)

// routeMonitoring reads up to n Route Monitoring records of the 100k dump.
func routeMonitoring(t *testing.T, n int) []record.Record {
	t.Helper()
	f := filepath.Join(testenv.Shared(t, "bmpdata"), "raw", "gobgp-3.10-all-dump-100k.bmp.gz")
	streams, err := capture.Open(f)
	if err != nil && len(streams) == 0 {
		t.Fatalf("%s: %v", f, err)
	}
	var recs []record.Record
	for _, s := range streams {
		fr := bmp.NewFramer(bytes.NewReader(s.Data), bmp.MaxMessageBytesLimit, 0)
		for len(recs) < n {
			m, err := fr.Next()
			if err != nil {
				break
			}
			if m[5] == byte(bmp.MsgRouteMonitoring) {
				seq := uint64(len(recs) + 1)
				recs = append(recs, record.Record{Seq: seq, Kind: record.KindBMP, Source: "192.0.2.1:40000", Time: receivedAt(seq), Payload: m})
			}
		}
	}
	if len(recs) < n {
		t.Fatalf("%s: %d route monitoring messages, want %d", f, len(recs), n)
	}
	return recs
}

// TestOutputChunksReused: the fast path's outputs name an Owner; outputs
// released come back as memory for later ones (far fewer bytes allocated
// than when nothing is released), and an output still held is never
// written over, however much is encoded and released around it.
func TestOutputChunksReused(t *testing.T) {
	recs := routeMonitoring(t, 20000)
	enc := bmp.Encoding{JSON: true}
	ownerless := 0
	encode := func(release bool, held func(i int) bool) (allocated uint64, kept []bmp.Output, want [][]byte) {
		e, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: enc, AgentID: "edge-1", Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		ownerless = 0
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i, rec := range recs {
			if err := e.Encode(rec, func(o bmp.Output) {
				if o.Owner == nil { // the library path's
					ownerless++
					return
				}
				switch {
				case held(i):
					kept = append(kept, o)
					want = append(want, append(bytes.Clone(o.Key), o.Value...))
				case release:
					o.Owner.Release()
				}
			}); err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc, kept, want
	}
	none := func(int) bool { return false }
	kept0, _, _ := encode(false, none)
	released, _, _ := encode(true, none)
	t.Logf("bytes allocated for %d records: %d kept, %d released; %d outputs of the library path", len(recs), kept0, released, ownerless)
	if ownerless*20 > len(recs) {
		t.Errorf("%d outputs of %d records name no Owner: the fast path should take nearly all", ownerless, len(recs))
	}
	if released*2 > kept0 {
		t.Errorf("releasing every output saved too little: %d bytes allocated, %d without releasing", released, kept0)
	}

	// Every 97th record's outputs are held (spread over many chunks),
	// the rest released at once.
	_, kept, want := encode(true, func(i int) bool { return i%97 == 0 })
	for i, o := range kept {
		if got := append(bytes.Clone(o.Key), o.Value...); !bytes.Equal(got, want[i]) {
			t.Fatalf("held output %d was overwritten:\n got  %q\n want %q", i, got, want[i])
		}
	}
}
