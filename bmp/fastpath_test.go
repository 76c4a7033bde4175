package bmp_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
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
	fast, lib       *bmp.Encoder
	fastReg, libReg *prometheus.Registry
}

func newEncoderPair(t testing.TB, enc bmp.Encoding, agent string) encoderPair {
	t.Helper()
	p := encoderPair{fastReg: prometheus.NewRegistry(), libReg: prometheus.NewRegistry()}
	for i, dst := range []**bmp.Encoder{&p.fast, &p.lib} {
		reg := p.fastReg
		if i == 1 {
			reg = p.libReg
		}
		e, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: enc, AgentID: agent, Registerer: reg})
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

// metrics describes every counter of a registry, one line each.
func metrics(t testing.TB, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out = append(out, fmt.Sprintf("%s{%s} %v", mf.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue()))
		}
	}
	return out
}

// sameMetrics requires the fast path to count what the library path counts.
func (p encoderPair) sameMetrics(t testing.TB) {
	t.Helper()
	if f, l := metrics(t, p.fastReg), metrics(t, p.libReg); !slices.Equal(f, l) {
		t.Errorf("metrics differ:\n fast    %q\n library %q", f, l)
	}
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
			p.sameMetrics(t)
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
	// Without a usable source the router comes from the key, which may
	// change from one record to the next.
	keys := [][]byte{{192, 0, 2, 1}, []byte("2001:db8::5"), nil}
	for _, tc := range []struct {
		name   string
		enc    bmp.Encoding
		agent  string
		source string
	}{
		{"envelope", envelope, "edge-1", "[2001:db8::1]:179"},
		{"json only", jsonOnly, "edge-1", "192.0.2.1"},
		{"agent escaped", bmp.DefaultEncoding(), "edge <&>\"\u00e9\"\x01", "[2001:db8::1]:179"},
		{"router from key", bmp.DefaultEncoding(), "edge-1", ""},
		{"source not an address", bmp.DefaultEncoding(), "edge-1", "router \"7\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newEncoderPair(t, tc.enc, tc.agent)
			defer p.Close()
			var seq uint64
			for _, m := range frames(streams[0].Data) {
				seq++
				rec := record.Record{Seq: seq, Kind: record.KindBMP, Source: tc.source, Key: keys[seq%3], Time: receivedAt(seq), Payload: m}
				if err := p.compare(rec); err != nil {
					t.Fatalf("message %d: %v", seq, err)
				}
			}
			if bmp.FastPathHits(p.fast) == 0 {
				t.Error("no message took the fast path")
			}
			p.sameMetrics(t)
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

// TestLabelsAndUnknownExtCommunities checks the two fixes found on real
// captures, on both paths: a withdrawal publishes no labels (its label
// field, 0x800000 or another compatibility value, is not a label), and an
// extended community of a type GoBGP does not know keeps all 8 bytes.
func TestLabelsAndUnknownExtCommunities(t *testing.T) {
	rd := []byte{0, 0, 0xfd, 0xe8, 0, 0, 0, 1} // 65000:1
	vpn := func(label []byte, bits byte) []byte {
		return slices.Concat([]byte{bits}, label, rd, []byte{10, 1, 2})
	}
	labeled := func(label []byte) []byte { return slices.Concat([]byte{24 + 24}, label, []byte{10, 1, 2}) }
	unreach := func(safi byte, nlri []byte) []byte {
		return attr(0x80, 15, slices.Concat([]byte{0, 1, safi}, nlri))
	}
	reach := func(safi byte, nh, nlri []byte) []byte {
		return attr(0x80, 14, slices.Concat([]byte{0, 1, safi, byte(len(nh))}, nh, []byte{0}, nlri))
	}
	vpnNH := []byte{0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1}
	base := [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001)}
	tests := []struct {
		name   string
		attrs  [][]byte
		labels []uint32
		ext    []string
	}{
		{"vpn withdrawal 0x800000", [][]byte{unreach(128, vpn([]byte{0x80, 0, 0}, 112))}, nil, nil},
		{"vpn withdrawal with a label", [][]byte{unreach(128, vpn([]byte{0, 1, 1}, 112))}, nil, nil},
		{"labeled withdrawal 0x800000", [][]byte{unreach(4, labeled([]byte{0x80, 0, 0}))}, nil, nil},
		{"labeled withdrawal 0", [][]byte{unreach(4, labeled([]byte{0, 0, 0}))}, nil, nil},
		{"vpn announcement", append(slices.Clone(base), reach(128, vpnNH, vpn([]byte{0, 1, 1}, 112))), []uint32{16}, nil},
		{"vpn announcement 0x800000", append(slices.Clone(base), reach(128, vpnNH, vpn([]byte{0x80, 0, 0}, 112))), nil, nil},
		{"labeled announcement, two labels", append(slices.Clone(base), reach(4, []byte{192, 0, 2, 1}, slices.Concat([]byte{24 + 48}, []byte{0, 1, 0, 0, 2, 1}, []byte{10, 1, 2}))), []uint32{16, 32}, nil},
		{"unknown extended communities", append(slices.Clone(base), attr(0x40, 3, []byte{192, 0, 2, 1}),
			attr(0xc0, 16, []byte{0x8a, 0x01, 0, 0, 0, 0, 0x04, 0xd2, 0x0a, 0x02, 1, 2, 3, 4, 5, 6, 0x00, 0x02, 0xfd, 0xe8, 0, 0, 0, 7})), nil,
			[]string{"raw:8a010000000004d2", "raw:0a02010203040506", "target:65000:7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var nlri []byte
			if tt.ext != nil {
				nlri = []byte{24, 10, 9, 9}
			}
			msg := bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, tt.attrs, nlri))
			p := newEncoderPair(t, bmp.DefaultEncoding(), "edge-1")
			defer p.Close()
			rec := record.Record{Seq: 7, Kind: record.KindBMP, Source: "192.0.2.9:1", Time: receivedAt(7), Payload: msg}
			if err := p.compare(rec); err != nil {
				t.Fatal(err)
			}
			if bmp.FastPathHits(p.fast) != 1 {
				t.Error("the fast path did not take the message")
			}
			var evs []record.Event
			p.lib.Encode(rec, func(o bmp.Output) {
				if o.Index > 0 {
					var ev record.Event
					if err := json.Unmarshal(o.Value, &ev); err != nil {
						t.Fatal(err)
					}
					evs = append(evs, ev)
				}
			})
			if len(evs) != 1 || evs[0].Route == nil {
				t.Fatalf("events %+v, want one route", evs)
			}
			r := evs[0].Route
			if !slices.Equal(r.Labels, tt.labels) || !slices.Equal(r.ExtCommunities, tt.ext) {
				t.Errorf("labels %v extended communities %q, want %v %q", r.Labels, r.ExtCommunities, tt.labels, tt.ext)
			}
			if r.AFI == 1 && r.SAFI == 128 && r.RD != "65000:1" || r.Prefix != "10.1.2.0/24" && r.Prefix != "10.9.9.0/24" {
				t.Errorf("route %+v", r)
			}
		})
	}
}

// TestFastPathAttributes puts every attribute the schema names, and the
// AS4 reconciliation of a 2-byte session, through both paths.
func TestFastPathAttributes(t *testing.T) {
	as2path := func(segs ...[]uint16) []byte {
		var b []byte
		for i, s := range segs {
			typ := byte(2)
			if i == 1 {
				typ = 1 // a set
			}
			b = append(b, typ, byte(len(s)))
			for _, a := range s {
				b = binary.BigEndian.AppendUint16(b, a)
			}
		}
		return b
	}
	two := globalPeer
	two.flags = bmp.FlagA | bmp.FlagL
	v6 := peerHdr{flags: bmp.FlagV, addr: "2001:db8::1", as: 65002, id: "192.0.2.2", ts: 1700000000}
	all := [][]byte{
		attr(0x40, 1, []byte{2}),
		attr(0x40, 2, as2path([]uint16{65001, 23456}, []uint16{65010, 65011})),
		attr(0x40, 3, []byte{192, 0, 2, 1}),
		attr(0x80, 4, u32(10)),
		attr(0x40, 5, u32(200)),
		attr(0x40, 6, nil),
		attr(0xc0, 7, []byte{0x5b, 0xa0, 192, 0, 2, 7}),
		attr(0xc0, 8, slices.Concat(u32(65001<<16|100), u32(0xffffff01))),
		attr(0x80, 9, []byte{192, 0, 2, 9}),
		attr(0x80, 10, slices.Concat([]byte{192, 0, 2, 10}, []byte{192, 0, 2, 11})),
		attr(0xc0, 17, slices.Concat([]byte{2, 2}, u32(65001), u32(4200000001))),
		attr(0xc0, 18, slices.Concat(u32(4200000002), []byte{192, 0, 2, 7})),
		attr(0xc0, 32, slices.Concat(u32(4200000001), u32(1), u32(2))),
		attr(0xc0, 99, []byte{1, 2, 3}),
		attr(0x80, 100, nil),
	}
	mp6 := attr(0x80, 14, slices.Concat([]byte{0, 2, 1, 32}, netip.MustParseAddr("2001:db8::1").AsSlice(), netip.MustParseAddr("fe80::1").AsSlice(), []byte{0, 48, 0x20, 0x01, 0x0d, 0xb8, 0, 1, 128}, netip.MustParseAddr("2001:db8:ffff::1").AsSlice()))
	tests := []struct {
		name string
		msg  []byte
		want []string // substrings of the events
	}{
		{"2-byte session with AS4 attributes", bmpMessage(bmp.MsgRouteMonitoring, two.bytes(), update([]byte{16, 10, 1}, all, []byte{24, 10, 0, 1, 32, 10, 0, 0, 2})),
			[]string{`"as_path":[65001,65001,4200000001]`, `"aggregator":"4200000002:192.0.2.7"`, `"origin":"incomplete"`, `"large_communities":["4200000001:1:2"]`, `"atomic_aggregate":true`, `"cluster_list":["192.0.2.10","192.0.2.11"]`}},
		{"4-byte session: AS4 attributes kept raw only", bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001, 4200000001), attr(0xc0, 17, slices.Concat([]byte{2, 1}, u32(7)))}, []byte{24, 10, 0, 1})),
			[]string{`"as_path":[65001,4200000001]`, `"attributes":[{"type":17,"flags":192,"value":"AgEAAAAH"}]`}},
		{"IPv6 with a link-local next hop and withdrawals", bmpMessage(bmp.MsgRouteMonitoring, v6.bytes(), update(nil, [][]byte{attr(0x40, 1, []byte{0}), asPath4(65002), mp6, attr(0x80, 15, slices.Concat([]byte{0, 2, 1, 64}, netip.MustParseAddr("2001:db8:5::").AsSlice()[:8]))}, nil)),
			[]string{`"next_hop":"2001:db8::1"`, `"prefix":"2001:db8:1::/48"`, `"timestamp":"2023-11-14T22:13:20Z"`}},
		{"AS_SET on a 4-byte session", bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, [][]byte{attr(0x40, 1, []byte{0}), attr(0x40, 2, slices.Concat([]byte{2, 1}, u32(65001), []byte{1, 2}, u32(65010), u32(65011))), attr(0xc0, 7, slices.Concat(u32(65001), []byte{192, 0, 2, 7}))}, []byte{24, 10, 0, 1})),
			[]string{`"as_path":[65001,65010,65011],"as_path_segments":[{"type":"sequence","asns":[65001]},{"type":"set","asns":[65010,65011]}]`, `"aggregator":"65001:192.0.2.7"`}},
		{"End-of-RIB", bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, nil, nil)), []string{`"end_of_rib":true`}},
		{"End-of-RIB of VPNv6", bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, [][]byte{attr(0x80, 15, []byte{0, 2, 128})}, nil)), []string{`"family":"vpnv6-unicast","end_of_rib":true`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newEncoderPair(t, bmp.DefaultEncoding(), "edge-1")
			defer p.Close()
			rec := record.Record{Seq: 9, Kind: record.KindBMP, Source: "192.0.2.9:1", Time: receivedAt(9), Payload: tt.msg}
			if err := p.compare(rec); err != nil {
				t.Fatal(err)
			}
			if bmp.FastPathHits(p.fast) != 1 {
				t.Error("the fast path did not take the message")
			}
			var all []byte
			p.fast.Encode(rec, func(o bmp.Output) {
				if o.Index > 0 {
					all = append(append(all, o.Value...), '\n')
				}
			})
			for _, w := range tt.want {
				if !bytes.Contains(all, []byte(w)) {
					t.Errorf("%s\nlacks %s", all, w)
				}
			}
		})
	}
}
