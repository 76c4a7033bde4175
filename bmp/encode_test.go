package bmp_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
)

func newEncoder(t testing.TB, enc bmp.Encoding) *bmp.Encoder {
	t.Helper()
	e, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: enc, AgentID: "edge-1", Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func encodeAll(t testing.TB, e *bmp.Encoder, recs ...record.Record) [][]bmp.Output {
	t.Helper()
	var out [][]bmp.Output
	for _, r := range recs {
		var o []bmp.Output
		if err := e.Encode(r, func(x bmp.Output) { o = append(o, x) }); err != nil {
			t.Fatal(err)
		}
		out = append(out, o)
	}
	return out
}

func TestEncodeStreamsKeysIndexes(t *testing.T) {
	received := time.Date(2026, 11, 21, 7, 0, 0, 123456000, time.UTC)
	two := append(append(u32(1), 24, 10, 0, 1), append(u32(2), 24, 10, 0, 1)...) // one prefix, two paths
	attrs := [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001), attr(0x40, 3, []byte{192, 0, 2, 1})}
	post := globalPeer
	post.flags = bmp.FlagL
	out := globalPeer
	out.flags = bmp.FlagO | bmp.FlagL
	loc := peerHdr{typ: bmp.PeerTypeLocRIB, addr: "0.0.0.0", as: 65001, id: "192.0.2.9"}
	recs := []record.Record{
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgInitiation, tlv(2, []byte("r1")))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, attrs, two))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgRouteMonitoring, post.bytes(), update(nil, attrs, []byte{24, 10, 0, 2}))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgRouteMonitoring, out.bytes(), update(nil, attrs, []byte{24, 10, 0, 3}))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgRouteMonitoring, loc.bytes(), update(nil, attrs, []byte{24, 10, 0, 4}))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgStatistics, globalPeer.bytes(), u32(1), tlv(0, u32(1)))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgPeerDown, globalPeer.bytes(), []byte{4})},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgRouteMirroring, globalPeer.bytes(), tlv(1, []byte{0, 0}))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgTermination, tlv(1, []byte{0, 0}))},
		{Kind: record.KindBMP, Payload: bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), []byte("not bgp"))},
		{Kind: record.KindBMPSyntheticPeerDown, Payload: globalPeer.bytes()},
	}
	for i := range recs {
		recs[i].Seq, recs[i].Source, recs[i].Key, recs[i].Time = uint64(1000+i), "[2001:db8::9]:5000", []byte("2001:db8::9"), received
	}
	want := [][]string{
		{"bmp.raw 0 2001:db8::9", "bmp.router 1 2001:db8::9"},
		{"bmp.raw 0 2001:db8::9", "bmp.route.pre-policy 1 2001:db8::9||192.0.2.1||10.0.1.0/24", "bmp.route.pre-policy 2 2001:db8::9||192.0.2.1||10.0.1.0/24"},
		{"bmp.raw 0 2001:db8::9", "bmp.route.post-policy 1 2001:db8::9||192.0.2.1||10.0.2.0/24"},
		{"bmp.raw 0 2001:db8::9", "bmp.route.adj-rib-out 1 2001:db8::9||192.0.2.1||10.0.3.0/24"},
		{"bmp.raw 0 2001:db8::9", "bmp.route.loc-rib 1 2001:db8::9||0.0.0.0||10.0.4.0/24"},
		{"bmp.raw 0 2001:db8::9", "bmp.stats 1 2001:db8::9"},
		{"bmp.raw 0 2001:db8::9", "bmp.peer 1 2001:db8::9"},
		{"bmp.raw 0 2001:db8::9", "bmp.mirror 1 2001:db8::9"},
		{"bmp.raw 0 2001:db8::9", "bmp.router 1 2001:db8::9"},
		{"bmp.raw 0 2001:db8::9", "bmp.errors 1 2001:db8::9"},
		{"bmp.peer 1 2001:db8::9"},
	}
	e := newEncoder(t, bmp.DefaultEncoding())
	first := encodeAll(t, e, recs...)
	for i, outs := range first {
		var got []string
		for _, o := range outs {
			got = append(got, o.Stream+" "+jsonOf(t, o.Index)+" "+string(o.Key))
			if !slices.Contains(bmp.Streams().Names(), o.Stream) {
				t.Errorf("record %d: stream %q not in Streams()", i, o.Stream)
			}
			if o.Stream == bmp.StreamRaw {
				if !bytes.Equal(o.Value, recs[i].Payload) {
					t.Errorf("record %d: raw value is not the message as received", i)
				}
				continue
			}
			var ev record.Event
			if err := json.Unmarshal(o.Value, &ev); err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
			if wantID := bmp.ID("edge-1", recs[i].Seq, o.Index); ev.ID != wantID || ev.Agent != "edge-1" || ev.V != record.EventSchemaVersion ||
				ev.Seq != recs[i].Seq || !ev.ReceivedAt.Equal(received) || ev.Router != "2001:db8::9" || ev.Source != "bmp" {
				t.Errorf("record %d: envelope %s", i, o.Value)
			}
		}
		if !slices.Equal(got, want[i]) {
			t.Errorf("record %d:\n got  %q\n want %q", i, got, want[i])
		}
	}
	// A re-delivery, to a fresh encoder as after a restart, gives byte-identical outputs.
	again := encodeAll(t, newEncoder(t, bmp.DefaultEncoding()), recs...)
	for i := range first {
		for j := range first[i] {
			if !bytes.Equal(first[i][j].Value, again[i][j].Value) || first[i][j].Index != again[i][j].Index {
				t.Errorf("record %d output %d differs on re-delivery", i, j)
			}
		}
	}
}

func TestEncodeOpenBMPEnvelope(t *testing.T) {
	msg := bmpMessage(bmp.MsgInitiation, tlv(2, []byte("r1")))
	at := time.Date(2026, 11, 21, 7, 0, 0, 250000000, time.UTC)
	for _, router := range []string{"192.0.2.7", "2001:db8::7"} {
		enc := bmp.DefaultEncoding()
		enc.OpenBMPEnvelope, enc.JSON, enc.CollectorName = true, false, "edge-collector"
		e := newEncoder(t, enc)
		outs := encodeAll(t, e, record.Record{Seq: 1, Kind: record.KindBMP, Source: netip.AddrPortFrom(netip.MustParseAddr(router), 9).String(), Time: at, Payload: msg})
		if len(outs[0]) != 1 {
			t.Fatalf("%d outputs, want the raw message only", len(outs[0]))
		}
		v := outs[0][0].Value
		// Fixed offsets of the OpenBMP v1.7 binary header, as consumers read it.
		if string(v[0:4]) != "OBMP" || v[4] != 1 || v[5] != 7 || v[13] != 12 {
			t.Fatalf("header start % x", v[:14])
		}
		hlen := int(binary.BigEndian.Uint16(v[6:8]))
		if hlen != 78+len(enc.CollectorName) || int(binary.BigEndian.Uint32(v[8:12])) != len(msg) || !bytes.Equal(v[hlen:], msg) {
			t.Errorf("lengths: header %d, message %d", hlen, binary.BigEndian.Uint32(v[8:12]))
		}
		wantFlags := byte(0x80)
		if strings.Contains(router, ":") {
			wantFlags |= 0x40
		}
		if v[12] != wantFlags || binary.BigEndian.Uint32(v[14:18]) != uint32(at.Unix()) || binary.BigEndian.Uint32(v[18:22]) != 250000 {
			t.Errorf("flags %#x time %d.%d", v[12], binary.BigEndian.Uint32(v[14:18]), binary.BigEndian.Uint32(v[18:22]))
		}
		if binary.BigEndian.Uint32(v[hlen-4:hlen]) != 1 {
			t.Error("row count is not 1")
		}
		h, inner, err := bmp.ParseOpenBMP(v)
		if err != nil {
			t.Fatal(err)
		}
		if h.Router.String() != router || h.AdminID != "edge-collector" || !h.Time.Equal(at) || !bytes.Equal(inner, msg) {
			t.Errorf("parsed %+v", h)
		}
	}
}

func TestEncodingValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*bmp.Encoding)
		want string
	}{
		{"default", func(*bmp.Encoding) {}, ""},
		{"nothing out", func(e *bmp.Encoding) { e.Raw, e.JSON = false, false }, "bmp.encoding.raw, bmp.encoding.json: at least one must be true"},
		{"envelope without raw", func(e *bmp.Encoding) { e.Raw, e.OpenBMPEnvelope = false, true }, "bmp.encoding.openbmp_envelope: requires bmp.encoding.raw"},
		{"long collector name", func(e *bmp.Encoding) { e.CollectorName = strings.Repeat("x", 256) }, "bmp.encoding.collector_name: longer than 255 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := bmp.DefaultEncoding()
			tt.mod(&e)
			err := e.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || err.Error() != tt.want) {
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestEncodeJSONOnlyAndRawOnly(t *testing.T) {
	rec := record.Record{Seq: 3, Kind: record.KindBMP, Source: router, Payload: bmpMessage(bmp.MsgInitiation, tlv(2, []byte("r1")))}
	enc := bmp.DefaultEncoding()
	enc.Raw = false
	if o := encodeAll(t, newEncoder(t, enc), rec)[0]; len(o) != 1 || o[0].Stream != bmp.StreamRouter || o[0].Index != 1 {
		t.Errorf("json only: %+v", o)
	}
	enc = bmp.DefaultEncoding()
	enc.JSON = false
	if o := encodeAll(t, newEncoder(t, enc), rec)[0]; len(o) != 1 || o[0].Stream != bmp.StreamRaw || o[0].Index != 0 {
		t.Errorf("raw only: %+v", o)
	}
	e := newEncoder(t, bmp.DefaultEncoding())
	if err := e.Encode(record.Record{Kind: record.KindExaBGP}, func(bmp.Output) {}); err == nil {
		t.Error("exabgp record encoded without error")
	}
}

// BenchmarkEncode measures JSON encoding (raw plus JSON events) over the
// 100k GoBGP capture, through the fast path (Route Monitoring) as
// configured. Run: GOMAXPROCS=1 go test -run '^$' -bench Encode -benchmem ./bmp/
func BenchmarkEncode(b *testing.B) {
	path := filepath.Join(testenv.Shared(b, "bmpdata", "raw"), "gobgp-3.10-all-dump-100k.bmp.gz")
	streams, err := capture.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	var recs []record.Record
	fr := bmp.NewFramer(bytes.NewReader(streams[0].Data), bmp.MaxMessageBytesLimit, 0)
	for {
		m, err := fr.Next()
		if err != nil {
			break
		}
		// The framer reuses its buffer: each message is copied out.
		recs = append(recs, record.Record{Seq: uint64(len(recs) + 1), Kind: record.KindBMP, Source: "192.0.2.1:179",
			Time: time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC).Add(time.Duration(len(recs)) * 1300 * time.Nanosecond), Payload: bytes.Clone(m)})
	}
	// The library path is the reference, measured in the same run.
	for _, path := range []struct {
		name string
		fast bool
	}{{"fast-path", true}, {"library", false}} {
		b.Run(path.name, func(b *testing.B) {
			var events, bytesOut int
			emit := func(o bmp.Output) {
				if o.Index > 0 {
					events++
				}
				bytesOut += len(o.Value)
			}
			var before, after runtime.MemStats
			var ru0, ru1 syscall.Rusage
			runtime.ReadMemStats(&before)
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			b.ResetTimer()
			for range b.N {
				e := newEncoder(b, bmp.DefaultEncoding())
				bmp.SetFastPath(e, path.fast)
				for _, r := range recs {
					if err := e.Encode(r, emit); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			runtime.ReadMemStats(&after)
			// CPU time shows the cost even when other processes share the cores.
			cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(events), "cpu-ns/event")
			b.ReportMetric(float64(len(recs)*b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(events), "allocs/event")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(events), "B/event")
			b.ReportMetric(float64(bytesOut)/float64(len(recs)*b.N), "out-bytes/msg")
		})
	}
}
