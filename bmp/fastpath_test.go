package bmp_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
)

// encoderPair is a fast-path encoder and a library-path one, fed the same
// records.
type encoderPair struct {
	fast, lib *bmp.Encoder
}

func newEncoderPair(t testing.TB, enc bmp.Encoding, agent string) encoderPair {
	t.Helper()
	var p encoderPair
	for i, dst := range []**bmp.Encoder{&p.fast, &p.lib} {
		e, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: enc, AgentID: agent, Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		bmp.SetFastPath(e, i == 0)
		*dst = e
	}
	return p
}

func (p encoderPair) Close() { p.fast.Close(); p.lib.Close() }

// compare encodes rec with both and describes the first difference.
func (p encoderPair) compare(rec record.Record) error {
	var fast, lib []bmp.Output
	errF := p.fast.Encode(rec, func(o bmp.Output) { fast = append(fast, o) })
	errL := p.lib.Encode(rec, func(o bmp.Output) { lib = append(lib, o) })
	if (errF == nil) != (errL == nil) {
		return fmt.Errorf("errors differ: fast %v, library %v", errF, errL)
	}
	if len(fast) != len(lib) {
		return fmt.Errorf("%d outputs on the fast path, %d on the library path", len(fast), len(lib))
	}
	for i := range fast {
		f, l := fast[i], lib[i]
		if f.Stream != l.Stream || f.Index != l.Index || !bytes.Equal(f.Key, l.Key) || !bytes.Equal(f.Value, l.Value) {
			return fmt.Errorf("output %d differs:\n fast    %s %d %q\n         %s\n library %s %d %q\n         %s", i, f.Stream, f.Index, f.Key, f.Value, l.Stream, l.Index, l.Key, l.Value)
		}
	}
	return nil
}

// receivedAt varies the receive time's zone and precision, as spools give them.
func receivedAt(seq uint64) time.Time {
	t := time.Date(2026, 12, 7, 1, 2, 3, int(seq%1000)*1000007, time.UTC)
	if seq%3 == 0 {
		t = t.In(time.FixedZone("edge", 5*3600+1800))
	}
	return t
}

// TestFastPathMatchesLibrary feeds every message of every capture through
// the fast path and through the library path and requires byte-identical
// outputs. The 300,006-message dump runs in full without the race detector
// (scripts/test.sh's second pass), a prefix of it with.
func TestFastPathMatchesLibrary(t *testing.T) {
	var totalRM, totalHits int
	for _, f := range testenv.BMPCaptures(t, 10) {
		name := filepath.Base(f)
		if strings.HasSuffix(name, ".md") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			streams, err := capture.Open(f)
			if err != nil && len(streams) == 0 {
				t.Fatalf("%s: %v", f, err)
			}
			p := newEncoderPair(t, bmp.DefaultEncoding(), "edge-1")
			defer p.Close()
			limit := -1
			if raceEnabled && strings.Contains(name, "100k") {
				limit = raceMessageLimit
				t.Logf("race detector on: the first %d messages only", limit)
			}
			var seq uint64
			rm, fails := 0, 0
			for _, s := range streams {
				src := s.Src.String()
				if !s.Src.IsValid() {
					src = "192.0.2.250:40000"
				}
				fr := bmp.NewFramer(bytes.NewReader(s.Data), bmp.MaxMessageBytesLimit, 0)
				for limit < 0 || int(seq) < limit {
					m, err := fr.Next()
					if err != nil {
						break
					}
					seq++
					if m[5] == byte(bmp.MsgRouteMonitoring) {
						rm++
					}
					rec := record.Record{Seq: seq, Kind: record.KindBMP, Source: src, Time: receivedAt(seq), Payload: m}
					if err := p.compare(rec); err != nil {
						fails++
						if fails <= 5 {
							t.Errorf("message %d (% x…): %v", seq, m[:min(len(m), 64)], err)
						}
					}
				}
			}
			if fails > 5 {
				t.Errorf("%d messages differ in all", fails)
			}
			hits := int(bmp.FastPathHits(p.fast))
			if bmp.FastPathHits(p.lib) != 0 {
				t.Error("the library-path encoder used the fast path")
			}
			totalRM, totalHits = totalRM+rm, totalHits+hits
			t.Logf("%d messages, %d route monitoring, %d through the fast path", seq, rm, hits)
		})
	}
	if totalHits == 0 || totalHits*2 < totalRM {
		t.Errorf("the fast path took %d of %d route monitoring messages: most should take it", totalHits, totalRM)
	}
}

// TestFastPathEncodings compares both paths under the other encodings and
// an agent id that needs JSON escaping.
func TestFastPathEncodings(t *testing.T) {
	path := filepath.Join(testenv.Shared(t, "bmpdata", "raw"), "juniper-mx204-junos24__daisy-19.bmp")
	streams, err := capture.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	envelope := bmp.DefaultEncoding()
	envelope.OpenBMPEnvelope = true
	jsonOnly := bmp.DefaultEncoding()
	jsonOnly.Raw = false
	for _, tc := range []struct {
		name  string
		enc   bmp.Encoding
		agent string
	}{
		{"envelope", envelope, "edge-1"},
		{"json only", jsonOnly, "edge-1"},
		{"agent escaped", bmp.DefaultEncoding(), "edge <&>\"\u00e9\"\x01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newEncoderPair(t, tc.enc, tc.agent)
			defer p.Close()
			var seq uint64
			for _, m := range frames(streams[0].Data) {
				seq++
				if err := p.compare(record.Record{Seq: seq, Kind: record.KindBMP, Source: "[2001:db8::1]:179", Time: receivedAt(seq), Payload: m}); err != nil {
					t.Fatalf("message %d: %v", seq, err)
				}
			}
			if bmp.FastPathHits(p.fast) == 0 {
				t.Error("no message took the fast path")
			}
		})
	}
}

// FuzzFastPath feeds mutated sessions (Peer Up state included) to both
// paths: every output must be byte-identical.
func FuzzFastPath(f *testing.F) {
	for _, s := range sharedStreams(f) {
		ms := frames(s)
		// A session's start (Peer Ups set the decoding state), and single
		// Route Monitoring messages.
		var head []byte
		for i, m := range ms {
			if len(head)+len(m) <= 8<<10 {
				head = append(head, m...)
			}
			if m[5] == byte(bmp.MsgRouteMonitoring) && i%25 == 0 {
				f.Add(m)
			}
		}
		f.Add(head)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		p := newEncoderPair(t, bmp.DefaultEncoding(), "edge-1")
		defer p.Close()
		for i, m := range frames(stream) {
			seq := uint64(i + 1)
			if err := p.compare(record.Record{Seq: seq, Kind: record.KindBMP, Source: "192.0.2.1:1", Time: receivedAt(seq), Payload: m}); err != nil {
				t.Fatalf("message %d (%s): %v", i+1, hex.EncodeToString(m), err)
			}
		}
	})
}
