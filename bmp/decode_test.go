package bmp_test

import (
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// ---- builders for BMP and BGP messages ----

func bmpMessage(typ bmp.MsgType, body ...[]byte) []byte {
	m := []byte{3, 0, 0, 0, 0, byte(typ)}
	for _, b := range body {
		m = append(m, b...)
	}
	binary.BigEndian.PutUint32(m[1:5], uint32(len(m)))
	return m
}

type peerHdr struct {
	typ, flags uint8
	rd         [8]byte
	addr       string
	as         uint32
	id         string
	ts         uint32
}

func (p peerHdr) bytes() []byte {
	b := make([]byte, 42)
	b[0], b[1] = p.typ, p.flags
	copy(b[2:10], p.rd[:])
	a := netip.MustParseAddr(p.addr)
	if a.Is4() {
		x := a.As4()
		copy(b[22:26], x[:])
	} else {
		x := a.As16()
		copy(b[10:26], x[:])
	}
	binary.BigEndian.PutUint32(b[26:], p.as)
	id := netip.MustParseAddr(p.id).As4()
	copy(b[30:34], id[:])
	binary.BigEndian.PutUint32(b[34:], p.ts)
	return b
}

func tlv(typ uint16, v []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

func bgpMsg(typ byte, body []byte) []byte {
	m := slices.Repeat([]byte{0xff}, 16)
	m = binary.BigEndian.AppendUint16(m, uint16(19+len(body)))
	m = append(m, typ)
	return append(m, body...)
}

func capab(code byte, v ...byte) []byte { return append([]byte{code, byte(len(v))}, v...) }

func openMsg(as uint16, id string, caps ...[]byte) []byte {
	var params []byte
	for _, c := range caps {
		params = append(params, 2, byte(len(c)))
		params = append(params, c...)
	}
	b := []byte{4}
	b = binary.BigEndian.AppendUint16(b, as)
	b = binary.BigEndian.AppendUint16(b, 90)
	x := netip.MustParseAddr(id).As4()
	b = append(b, x[:]...)
	b = append(b, byte(len(params)))
	return bgpMsg(1, append(b, params...))
}

func attr(flags, typ byte, v []byte) []byte {
	if len(v) > 255 {
		flags |= 0x10
		b := []byte{flags, typ}
		b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
		return append(b, v...)
	}
	return append([]byte{flags, typ, byte(len(v))}, v...)
}

func update(withdrawn []byte, attrs [][]byte, nlri []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(withdrawn)))
	b = append(b, withdrawn...)
	var a []byte
	for _, x := range attrs {
		a = append(a, x...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(a)))
	b = append(b, a...)
	return bgpMsg(2, append(b, nlri...))
}

func asPath4(asns ...uint32) []byte {
	b := []byte{2, byte(len(asns))}
	for _, a := range asns {
		b = binary.BigEndian.AppendUint32(b, a)
	}
	return attr(0x40, 2, b)
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

var (
	globalPeer = peerHdr{addr: "192.0.2.1", as: 65001, id: "192.0.2.1", ts: 1700000000}
	router     = "203.0.113.9:41000"
)

// decodeAll decodes messages in order with one decoder and returns the events.
func decodeAll(t *testing.T, d *bmp.Decoder, msgs ...[]byte) [][]record.Event {
	t.Helper()
	var out [][]record.Event
	for i, m := range msgs {
		var evs []record.Event
		rec := record.Record{Seq: uint64(100 + i), Kind: record.KindBMP, Source: router, Time: time.Unix(1700000001, 0).UTC(), Payload: m}
		if err := d.Decode(rec, func(ev record.Event) { evs = append(evs, ev) }); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		out = append(out, evs)
	}
	return out
}

func newDecoder(t *testing.T, dir string) (*bmp.Decoder, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := bmp.NewDecoder(bmp.DecoderOptions{StateDir: dir, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, reg
}

// jsonOf marshals an event body so cases can assert on the wire format.
func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDecodeMessageTypes(t *testing.T) {
	addPathBoth := capab(69, 0, 1, 1, 3) // IPv4 unicast, send/receive
	addPathRecv := capab(69, 0, 1, 1, 1) // IPv4 unicast, receive
	as4 := func(as uint32) []byte { return capab(65, u32(as)...) }
	mp := func(afi uint16, safi byte) []byte { return capab(1, byte(afi>>8), byte(afi), 0, safi) }
	peerUp := func(p peerHdr, sent, recv []byte) []byte {
		local := make([]byte, 20)
		local[15] = 0 // IPv4 local address in the last 4 bytes
		copy(local[12:16], []byte{192, 0, 2, 254})
		binary.BigEndian.PutUint16(local[16:], 179)
		binary.BigEndian.PutUint16(local[18:], 50000)
		return bmpMessage(bmp.MsgPeerUp, p.bytes(), local, sent, recv, tlv(0, []byte("peer up note")))
	}
	withPathID := append(u32(7), 24, 198, 51, 100) // path id 7, 198.51.100.0/24
	ipv4Update := update(nil, [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001, 4200000000), attr(0x40, 3, []byte{192, 0, 2, 1}),
		attr(0x80, 4, u32(50)), attr(0x40, 5, u32(200)), attr(0xc0, 8, u32(65001<<16|100)), attr(0xc0, 32, append(append(u32(65001), u32(1)...), u32(2)...)),
		attr(0xc0, 99, []byte{1, 2, 3})}, withPathID)
	postPolicyOut := globalPeer
	postPolicyOut.flags = bmp.FlagL | bmp.FlagO
	locRIB := peerHdr{typ: bmp.PeerTypeLocRIB, flags: bmp.FlagF, addr: "0.0.0.0", as: 65001, id: "192.0.2.9", rd: [8]byte{0, 0, 0xfd, 0xe9, 0, 0, 0, 7}}
	rdPeer := peerHdr{typ: bmp.PeerTypeRDInstance, flags: bmp.FlagV, addr: "2001:db8::1", as: 65002, id: "192.0.2.2", rd: [8]byte{0, 1, 192, 0, 2, 1, 0, 9}}
	vpnv4 := func() []byte {
		// MP_REACH VPNv4: next hop RD(0)+192.0.2.7, label 16000 (bottom), RD 65001:7, 10.1.0.0/16
		nh := append(make([]byte, 8), 192, 0, 2, 7)
		nlri := []byte{24 + 64 + 16, 0x03, 0xe8, 0x01, 0, 0, 0xfd, 0xe9, 0, 0, 0, 7, 10, 1}
		v := append([]byte{0, 1, 128, byte(len(nh))}, nh...)
		v = append(append(v, 0), nlri...)
		return update(nil, [][]byte{attr(0x40, 1, []byte{2}), asPath4(65002), attr(0x80, 14, v),
			attr(0xc0, 16, []byte{0, 2, 0xfd, 0xe9, 0, 0, 0, 7})}, nil)
	}()
	unknownFamily := func() []byte {
		v := append([]byte{0, 57, 65, 4, 192, 0, 2, 7, 0}, 0xde, 0xad, 0xbe, 0xef)
		return update(nil, [][]byte{attr(0x40, 1, []byte{0}), asPath4(65002), attr(0x80, 14, v)}, nil)
	}()
	notification := bgpMsg(3, []byte{6, 2, 'b', 'y', 'e'})

	tests := []struct {
		name  string
		msgs  [][]byte
		check func(t *testing.T, evs [][]record.Event)
	}{
		{"initiation", [][]byte{bmpMessage(bmp.MsgInitiation, tlv(1, []byte("Router OS 1.0")), tlv(2, []byte("r1\x00")), tlv(0, []byte{0xff, 0xfe}))},
			func(t *testing.T, evs [][]record.Event) {
				ev := one(t, evs[0], bmp.EventInitiation)
				ri := ev.Data.(*bmp.RouterInfo)
				if ri.SysName != "r1" || ri.SysDescr != "Router OS 1.0" || len(ri.TLVs) != 3 || ri.TLVs[2].Raw == nil {
					t.Errorf("initiation: %s", jsonOf(t, ri))
				}
				if ev.Router != "203.0.113.9" || ev.Peer != nil {
					t.Errorf("router %q peer %v", ev.Router, ev.Peer)
				}
			}},
		{"termination with reason", [][]byte{bmpMessage(bmp.MsgTermination, tlv(0, []byte("shutting down")), tlv(1, []byte{0, 2}))},
			func(t *testing.T, evs [][]record.Event) {
				ri := one(t, evs[0], bmp.EventTermination).Data.(*bmp.RouterInfo)
				if ri.Reason == nil || *ri.Reason != 2 || ri.ReasonName != "out-of-resources" || ri.TLVs[0].Value != "shutting down" {
					t.Errorf("termination: %s", jsonOf(t, ri))
				}
			}},
		{"peer up then add-path route (adj-rib-in: peer sends, router receives)", [][]byte{
			peerUp(globalPeer, openMsg(23456, "192.0.2.254", as4(65000), mp(1, 1), addPathRecv), openMsg(65001, "192.0.2.1", as4(65001), mp(1, 1), addPathBoth)),
			bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), ipv4Update),
		}, func(t *testing.T, evs [][]record.Event) {
			pu := one(t, evs[0], bmp.EventPeerUp).Data.(*bmp.PeerUp)
			if pu.SentOpen.AS != 65000 || pu.ReceivedOpen.BGPID != "192.0.2.1" || pu.ReceivedOpen.HoldTime != 90 || !pu.Negotiated.FourOctetAS ||
				len(pu.Negotiated.AddPathIn) != 1 || len(pu.Negotiated.AddPathOut) != 0 || pu.LocalAddress != "192.0.2.254" || pu.Information[0].Value != "peer up note" {
				t.Errorf("peer up: %s", jsonOf(t, pu))
			}
			ev := one(t, evs[1], bmp.EventRoute)
			r := ev.Route
			want := `{"action":"announce","prefix":"198.51.100.0/24","path_id":7,"afi":1,"safi":1,"family":"ipv4-unicast","next_hop":"192.0.2.1","origin":"igp","as_path":[65001,4200000000],"communities":["65001:100"],"large_communities":["65001:1:2"],"med":50,"local_pref":200,"attributes":[{"type":99,"flags":192,"value":"AQID"}],"policy":"pre-policy","rib":"adj-rib-in"}`
			if got := jsonOf(t, r); got != want {
				t.Errorf("route:\n got  %s\n want %s", got, want)
			}
			if ev.Timestamp == nil || ev.Timestamp.Unix() != 1700000000 || ev.Peer.Address != "192.0.2.1" || ev.Peer.AS != 65001 {
				t.Errorf("event envelope: %s", jsonOf(t, ev))
			}
		}},
		{"adj-rib-out add-path is the reverse direction", [][]byte{
			// Router may send and peer may receive: path ids router→peer only.
			peerUp(postPolicyOut, openMsg(65000, "192.0.2.254", mp(1, 1), addPathBoth), openMsg(65001, "192.0.2.1", mp(1, 1), addPathRecv)),
			bmpMessage(bmp.MsgRouteMonitoring, postPolicyOut.bytes(), ipv4Update),
		}, func(t *testing.T, evs [][]record.Event) {
			pu := one(t, evs[0], bmp.EventPeerUp).Data.(*bmp.PeerUp)
			if len(pu.Negotiated.AddPathIn) != 0 || len(pu.Negotiated.AddPathOut) != 1 || pu.Negotiated.FourOctetAS {
				t.Errorf("negotiated: %s", jsonOf(t, pu.Negotiated))
			}
			r := one(t, evs[1], bmp.EventRoute).Route
			if r.PathID != 7 || r.Prefix != "198.51.100.0/24" || r.RIB != "adj-rib-out" || r.Policy != "post-policy" {
				t.Errorf("route: %s", jsonOf(t, r))
			}
		}},
		{"loc-rib without peer up: path ids inferred, F flag, RD", [][]byte{bmpMessage(bmp.MsgRouteMonitoring, locRIB.bytes(), ipv4Update)},
			func(t *testing.T, evs [][]record.Event) {
				ev := one(t, evs[0], bmp.EventRoute)
				if ev.Route.PathID != 7 || ev.Route.RIB != "loc-rib" || ev.Route.Policy != "" || !ev.Peer.Filtered || ev.Peer.IPv6 || ev.Peer.Type != "loc-rib" || ev.Peer.RD != "65001:7" {
					t.Errorf("loc-rib route: %s", jsonOf(t, ev))
				}
			}},
		{"rd-instance ipv6 peer, vpnv4 route", [][]byte{bmpMessage(bmp.MsgRouteMonitoring, rdPeer.bytes(), vpnv4)},
			func(t *testing.T, evs [][]record.Event) {
				ev := one(t, evs[0], bmp.EventRoute)
				r := ev.Route
				if r.Family != "vpnv4-unicast" || r.Prefix != "10.1.0.0/16" || r.RD != "65001:7" || !slices.Equal(r.Labels, []uint32{16000}) ||
					r.NextHop != "192.0.2.7" || r.Origin != "incomplete" || !slices.Equal(r.ExtCommunities, []string{"target:65001:7"}) {
					t.Errorf("vpnv4 route: %s", jsonOf(t, r))
				}
				if ev.Peer.RD != "192.0.2.1:9" || !ev.Peer.IPv6 || ev.Peer.Address != "2001:db8::1" || ev.Peer.Type != "rd-instance" {
					t.Errorf("peer: %s", jsonOf(t, ev.Peer))
				}
			}},
		{"unknown family carried raw", [][]byte{bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), unknownFamily)},
			func(t *testing.T, evs [][]record.Event) {
				r := one(t, evs[0], bmp.EventRoute).Route
				if r.AFI != 57 || r.SAFI != 65 || r.Family != "afi-57-safi-65" || r.NextHop != "192.0.2.7" || string(r.NLRI) != "\xde\xad\xbe\xef" || r.Prefix != "" {
					t.Errorf("raw family route: %s", jsonOf(t, r))
				}
			}},
		{"withdraw and end-of-rib", [][]byte{
			bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update([]byte{16, 10, 9}, nil, nil)),
			bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, nil, nil)),
			bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, [][]byte{attr(0x80, 15, []byte{0, 2, 1})}, nil)),
		}, func(t *testing.T, evs [][]record.Event) {
			if r := one(t, evs[0], bmp.EventRoute).Route; r.Action != "withdraw" || r.Prefix != "10.9.0.0/16" {
				t.Errorf("withdraw: %s", jsonOf(t, r))
			}
			if r := one(t, evs[1], bmp.EventRoute).Route; !r.EndOfRIB || r.Family != "ipv4-unicast" {
				t.Errorf("ipv4 eor: %s", jsonOf(t, r))
			}
			if r := one(t, evs[2], bmp.EventRoute).Route; !r.EndOfRIB || r.Family != "ipv6-unicast" {
				t.Errorf("ipv6 eor: %s", jsonOf(t, r))
			}
		}},
		{"malformed update: decode error, nothing guessed", [][]byte{bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), update(nil, [][]byte{attr(0x40, 1, []byte{0})}, []byte{40, 1, 2}))},
			func(t *testing.T, evs [][]record.Event) {
				de := one(t, evs[0], bmp.EventDecodeError).Data.(*bmp.DecodeError)
				if de.Reason != bmp.ErrReasonUpdate || de.MessageType != "route-monitoring" || len(de.Message) == 0 {
					t.Errorf("decode error: %s", jsonOf(t, de))
				}
			}},
		{"stats: every defined type, vendor type raw", [][]byte{bmpMessage(bmp.MsgStatistics, globalPeer.bytes(), u32(7),
			tlv(0, u32(3)), tlv(7, binary.BigEndian.AppendUint64(nil, 1<<40)), tlv(9, append([]byte{0, 2, 1}, binary.BigEndian.AppendUint64(nil, 5)...)),
			tlv(14, binary.BigEndian.AppendUint64(nil, 6)), tlv(17, append([]byte{0, 1, 128}, binary.BigEndian.AppendUint64(nil, 8)...)),
			tlv(65531, []byte{1, 2, 3}), tlv(11, []byte{1, 2, 3}))},
			func(t *testing.T, evs [][]record.Event) {
				st := one(t, evs[0], bmp.EventStats).Data.(*bmp.Stats)
				want := `{"counters":[{"type":0,"name":"rejected-prefixes","value":3},{"type":7,"name":"routes-adj-rib-in","value":1099511627776},{"type":9,"name":"routes-adj-rib-in-per-afi-safi","value":5,"afi":2,"safi":1,"family":"ipv6-unicast"},{"type":14,"name":"routes-pre-policy-adj-rib-out","value":6},{"type":17,"name":"routes-post-policy-adj-rib-out-per-afi-safi","value":8,"afi":1,"safi":128,"family":"vpnv4-unicast"},{"type":65531,"name":"experimental-65531","raw":"AQID"},{"type":11,"name":"updates-treated-as-withdraw","raw":"AQID"}]}`
				if got := jsonOf(t, st); got != want {
					t.Errorf("stats:\n got  %s\n want %s", got, want)
				}
			}},
		{"peer down reasons", [][]byte{
			bmpMessage(bmp.MsgPeerDown, globalPeer.bytes(), []byte{1}, notification),
			bmpMessage(bmp.MsgPeerDown, globalPeer.bytes(), []byte{2, 0, 24}),
			bmpMessage(bmp.MsgPeerDown, globalPeer.bytes(), []byte{3}, notification),
			bmpMessage(bmp.MsgPeerDown, globalPeer.bytes(), []byte{4}),
			bmpMessage(bmp.MsgPeerDown, globalPeer.bytes(), []byte{5}),
			bmpMessage(bmp.MsgPeerDown, locRIB.bytes(), []byte{6}, tlv(3, []byte("vrf-red"))),
		}, func(t *testing.T, evs [][]record.Event) {
			names := []string{"local-notification", "local-no-notification", "remote-notification", "remote-no-notification", "peer-de-configured", "local-system-closed"}
			for i, e := range evs {
				pd := one(t, e, bmp.EventPeerDown).Data.(*bmp.PeerDown)
				if int(pd.Reason) != i+1 || pd.ReasonName != names[i] {
					t.Errorf("reason %d: %s", i+1, jsonOf(t, pd))
				}
			}
			if n := evs[0][0].Data.(*bmp.PeerDown).Notification; n == nil || n.Code != 6 || n.Subcode != 2 || n.SubcodeStr != "administrative-shutdown" || string(n.Data) != "bye" {
				t.Errorf("notification: %+v", n)
			}
			if f := evs[1][0].Data.(*bmp.PeerDown).FSMEvent; f == nil || *f != 24 {
				t.Errorf("fsm event: %v", f)
			}
			if tl := evs[5][0].Data.(*bmp.PeerDown).TLVs; len(tl) != 1 || tl[0].Name != "vrf-table-name" || tl[0].Value != "vrf-red" {
				t.Errorf("reason 6 tlvs: %+v", tl)
			}
		}},
		{"route mirroring", [][]byte{bmpMessage(bmp.MsgRouteMirroring, globalPeer.bytes(), tlv(0, ipv4Update), tlv(1, []byte{0, 1}))},
			func(t *testing.T, evs [][]record.Event) {
				rm := one(t, evs[0], bmp.EventRouteMirroring).Data.(*bmp.RouteMirroring)
				if len(rm.TLVs) != 2 || len(rm.TLVs[0].BGPMessage) != len(ipv4Update) || rm.TLVs[1].CodeName != "messages-lost" {
					t.Errorf("route mirroring: %s", jsonOf(t, rm))
				}
			}},
		{"length lies: decode error", [][]byte{append(bmpMessage(bmp.MsgInitiation), 0)},
			func(t *testing.T, evs [][]record.Event) {
				if de := one(t, evs[0], bmp.EventDecodeError).Data.(*bmp.DecodeError); de.Reason != bmp.ErrReasonBMPHeader {
					t.Errorf("decode error: %+v", de)
				}
			}},
		{"unknown message type: decode error", [][]byte{bmpMessage(9, []byte{1, 2})},
			func(t *testing.T, evs [][]record.Event) {
				if de := one(t, evs[0], bmp.EventDecodeError).Data.(*bmp.DecodeError); de.Reason != bmp.ErrReasonBMPHeader || !strings.Contains(de.Error, "type 9") {
					t.Errorf("decode error: %+v", de)
				}
			}},
		{"stats count beyond the message: decode error, no huge allocation", [][]byte{bmpMessage(bmp.MsgStatistics, globalPeer.bytes(), u32(0xffffffff), tlv(0, u32(1)))},
			func(t *testing.T, evs [][]record.Event) {
				if de := one(t, evs[0], bmp.EventDecodeError).Data.(*bmp.DecodeError); de.Reason != bmp.ErrReasonBMPBody || !strings.Contains(de.Error, "stats count") {
					t.Errorf("decode error: %+v", de)
				}
			}},
		{"truncated peer up: decode error", [][]byte{bmpMessage(bmp.MsgPeerUp, globalPeer.bytes(), []byte{1, 2, 3})},
			func(t *testing.T, evs [][]record.Event) {
				if de := one(t, evs[0], bmp.EventDecodeError).Data.(*bmp.DecodeError); de.Reason != bmp.ErrReasonBMPBody {
					t.Errorf("decode error: %+v", de)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := newDecoder(t, "")
			tt.check(t, decodeAll(t, d, tt.msgs...))
		})
	}
}

// one asserts that a message produced exactly one event, of the given type.
func one(t *testing.T, evs []record.Event, typ string) record.Event {
	t.Helper()
	if len(evs) != 1 || evs[0].Type != typ {
		var types []string
		for _, e := range evs {
			types = append(types, e.Type+":"+jsonOf(t, e.Data))
		}
		t.Fatalf("got events %v, want one %s", types, typ)
	}
	return evs[0]
}

func TestDecodeSyntheticPeerDown(t *testing.T) {
	d, reg := newDecoder(t, "")
	var evs []record.Event
	rec := record.Record{Seq: 5, Kind: record.KindBMPSyntheticPeerDown, Source: router, Payload: globalPeer.bytes()}
	if err := d.Decode(rec, func(ev record.Event) { evs = append(evs, ev) }); err != nil {
		t.Fatal(err)
	}
	ev := one(t, evs, bmp.EventPeerDown)
	if !ev.Peer.Synthetic || ev.Peer.Address != "192.0.2.1" || ev.Data.(*bmp.PeerDown).ReasonName != "bmp-session-closed" {
		t.Errorf("synthetic peer down: %s", jsonOf(t, ev))
	}
	if err := d.Decode(record.Record{Kind: record.KindExaBGP}, func(record.Event) {}); err == nil {
		t.Error("exabgp record: no error")
	}
	if got := testutil.ToFloat64(counterOf(t, reg, "bgpedge_bmp_decoded_messages_total")); got != 1 {
		t.Errorf("decoded messages %v, want 1", got)
	}
}

// TestPeerStateSurvivesRestart shows that Add-Path learnt from a Peer Up is
// kept on disk: a decoder opened later on the same directory decodes the
// peer's Route Monitoring the same way, and a record re-delivered from
// before a newer Peer Up still decodes with the state of its time.
func TestPeerStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	p := globalPeer
	sentAP := openMsg(65000, "192.0.2.254", capab(1, 0, 1, 0, 1), capab(69, 0, 1, 1, 3))
	recvAP := openMsg(65001, "192.0.2.1", capab(1, 0, 1, 0, 1), capab(69, 0, 1, 1, 3))
	recvNoAP := openMsg(65001, "192.0.2.1", capab(1, 0, 1, 0, 1))
	local := make([]byte, 20)
	// Two /24s with path ids 1 and 2; read without Add-Path this is a
	// different, valid-looking set of prefixes, so only state decides.
	withIDs := append(append(u32(1), 24, 10, 0, 1), append(u32(2), 24, 10, 0, 2)...)
	without := []byte{24, 10, 0, 1, 24, 10, 0, 2}
	attrs := [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001), attr(0x40, 3, []byte{192, 0, 2, 1})}
	rm := func(nlri []byte) record.Record {
		return record.Record{Kind: record.KindBMP, Source: router, Payload: bmpMessage(bmp.MsgRouteMonitoring, p.bytes(), update(nil, attrs, nlri))}
	}
	pu := func(recv []byte) record.Record {
		return record.Record{Kind: record.KindBMP, Source: router, Payload: bmpMessage(bmp.MsgPeerUp, p.bytes(), local, sentAP, recv)}
	}
	decode := func(d *bmp.Decoder, seq uint64, rec record.Record) []string {
		rec.Seq = seq
		var got []string
		if err := d.Decode(rec, func(ev record.Event) {
			if ev.Route != nil {
				got = append(got, ev.Route.Prefix+"#"+jsonOf(t, ev.Route.PathID))
			} else if ev.Type == bmp.EventDecodeError {
				got = append(got, "error")
			}
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	want := []string{"10.0.1.0/24#1", "10.0.2.0/24#2"}

	d1, err := bmp.NewDecoder(bmp.DecoderOptions{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	decode(d1, 10, pu(recvAP))
	if got := decode(d1, 11, rm(withIDs)); !slices.Equal(got, want) {
		t.Fatalf("before restart: %v", got)
	}
	decode(d1, 20, pu(recvNoAP)) // the peer reconnects without Add-Path
	if got := decode(d1, 21, rm(without)); !slices.Equal(got, []string{"10.0.1.0/24#0", "10.0.2.0/24#0"}) {
		t.Fatalf("after second peer up: %v", got)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	d2, err := bmp.NewDecoder(bmp.DecoderOptions{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	// Re-delivered after a restart: seq 11 predates the second Peer Up.
	if got := decode(d2, 11, rm(withIDs)); !slices.Equal(got, want) {
		t.Errorf("re-delivered after restart: %v, want %v", got, want)
	}
	if got := decode(d2, 22, rm(without)); !slices.Equal(got, []string{"10.0.1.0/24#0", "10.0.2.0/24#0"}) {
		t.Errorf("new record after restart: %v", got)
	}
}

func TestDecodeMetricsLint(t *testing.T) {
	d, reg := newDecoder(t, "")
	decodeAll(t, d, bmpMessage(bmp.MsgInitiation, tlv(2, []byte("r1"))), bmpMessage(9))
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	if got := testutil.ToFloat64(counterOf(t, reg, "bgpedge_bmp_decode_errors_total")); got != 1 {
		t.Errorf("decode errors %v, want 1", got)
	}
}
