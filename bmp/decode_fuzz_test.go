package bmp_test

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// sharedStreams returns the BMP byte streams of the shared captures (the
// 100k dump excluded), for fuzz seeds. Nothing is copied into the repository.
func sharedStreams(f *testing.F) [][]byte {
	f.Helper()
	var out [][]byte
	for _, p := range testenv.BMPCaptures(f, 10) {
		if strings.HasSuffix(p, ".gz") {
			continue // the 100k dump: too large a seed
		}
		ss, err := capture.Open(p)
		if err != nil {
			f.Fatalf("seed capture %s: %v", filepath.Base(p), err)
		}
		for _, s := range ss {
			out = append(out, s.Data)
		}
	}
	return out
}

func frames(b []byte) [][]byte {
	var out [][]byte
	fr := bmp.NewFramer(bytes.NewReader(b), bmp.MaxMessageBytesLimit, 0)
	for {
		m, err := fr.Next()
		if err != nil {
			return out
		}
		out = append(out, bytes.Clone(m))
	}
}

// FuzzDecode feeds single messages: Decode must not panic, must emit at
// least one event, and a route event must carry its peer and route.
func FuzzDecode(f *testing.F) {
	seen := map[string]bool{}
	for _, s := range sharedStreams(f) {
		for i, m := range frames(s) {
			// Every non-RM message, and a sample of RMs, keeps the corpus small.
			if k := string(m[:6]); m[5] != 0 || i%20 == 0 || !seen[k] {
				seen[k] = true
				f.Add(m)
			}
		}
	}
	d, err := bmp.NewDecoder(bmp.DecoderOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		n := 0
		err := d.Decode(record.Record{Seq: 1, Kind: record.KindBMP, Source: "192.0.2.1:1", Payload: msg}, func(ev record.Event) {
			n++
			if ev.Type == bmp.EventRoute && (ev.Peer == nil || ev.Route == nil) {
				t.Fatalf("route event without peer or route: %+v", ev)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		// A Route Monitoring UPDATE with attributes but no NLRI has no route
		// to report; anything else gives at least one event.
		if n == 0 && (len(msg) < 6 || msg[5] != 0) {
			t.Fatalf("no event for % x", msg)
		}
	})
}

// FuzzDecodeSession feeds a whole session (Peer Up, then Route Monitoring
// decoded with the state it set): framing plus stateful decoding must not
// panic and must emit an event for every message.
func FuzzDecodeSession(f *testing.F) {
	for _, s := range sharedStreams(f) {
		if len(s) > 8<<10 {
			s = s[:8<<10]
		}
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		d, err := bmp.NewDecoder(bmp.DecoderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range frames(stream) {
			n := 0
			if err := d.Decode(record.Record{Seq: uint64(i + 1), Kind: record.KindBMP, Source: "192.0.2.1:1", Payload: m}, func(record.Event) { n++ }); err != nil {
				t.Fatal(err)
			}
			if n == 0 && m[5] != 0 {
				t.Fatalf("message %d: no event", i)
			}
		}
	})
}
