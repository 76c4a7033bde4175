package bmp_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
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
	b := append(openFixed(as, id), byte(len(params)))
	return bgpMsg(1, append(b, params...))
}

// openFixed is an OPEN body's fixed part: version 4, AS, hold time 90, id.
func openFixed(as uint16, id string) []byte {
	b := []byte{4}
	b = binary.BigEndian.AppendUint16(b, as)
	b = binary.BigEndian.AppendUint16(b, 90)
	x := netip.MustParseAddr(id).As4()
	return append(b, x[:]...)
}

// extendedOpen is openMsg in RFC 9072's form: the one-byte optional
// parameters length is 255, marked by a parameter type 255, and the real
// length and each parameter's length take two bytes.
func extendedOpen(as uint16, id string, caps ...[]byte) []byte {
	var params []byte
	for _, c := range caps {
		params = append(params, 2)
		params = binary.BigEndian.AppendUint16(params, uint16(len(c)))
		params = append(params, c...)
	}
	b := append(openFixed(as, id), 255, 255)
	b = binary.BigEndian.AppendUint16(b, uint16(len(params)))
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
		{"peer up with an RFC 9072 extended OPEN", [][]byte{
			peerUp(globalPeer, openMsg(23456, "192.0.2.254", as4(65000), mp(1, 1)), extendedOpen(23456, "192.0.2.1", as4(4200000001), mp(1, 1), addPathBoth)),
			bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), ipv4Update),
		}, func(t *testing.T, evs [][]record.Event) {
			pu := one(t, evs[0], bmp.EventPeerUp).Data.(*bmp.PeerUp)
			if pu.ReceivedOpen == nil || pu.ReceivedOpen.AS != 4200000001 || pu.ReceivedOpen.BGPID != "192.0.2.1" || len(pu.Negotiated.AddPathIn) != 0 || pu.Information[0].Value != "peer up note" {
				t.Errorf("peer up: %s", jsonOf(t, pu))
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
		{"bad version: decode error of unknown type, no peer", [][]byte{func() []byte {
			m := bmpMessage(bmp.MsgRouteMonitoring, globalPeer.bytes(), ipv4Update)
			m[0] = 7
			return m
		}()},
			func(t *testing.T, evs [][]record.Event) {
				ev := one(t, evs[0], bmp.EventDecodeError)
				if de := ev.Data.(*bmp.DecodeError); de.Reason != bmp.ErrReasonBMPHeader || de.MessageType != "unknown" || ev.Peer != nil {
					t.Errorf("decode error %+v, peer %+v: a message whose header does not check has no type and no peer", de, ev.Peer)
				}
			}},
		{"unknown message type: decode error", [][]byte{bmpMessage(9, []byte{1, 2})},
			func(t *testing.T, evs [][]record.Event) {
				if de := one(t, evs[0], bmp.EventDecodeError).Data.(*bmp.DecodeError); de.Reason != bmp.ErrReasonBMPHeader || !strings.Contains(de.Error, "type 9") {
					t.Errorf("decode error: %+v", de)
				}
			}},
		{"bytes after the declared stats: counters kept, decode error", [][]byte{bmpMessage(bmp.MsgStatistics, globalPeer.bytes(), u32(1), tlv(0, u32(5)), []byte{1, 2, 3})},
			func(t *testing.T, evs [][]record.Event) {
				if len(evs[0]) != 2 || evs[0][0].Type != bmp.EventStats || evs[0][1].Type != bmp.EventDecodeError {
					t.Fatalf("events %s", jsonOf(t, evs[0]))
				}
				if de := evs[0][1].Data.(*bmp.DecodeError); de.Reason != bmp.ErrReasonTLV || !strings.Contains(de.Error, "3 bytes after") {
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

// Builders for the peer-state tests: a Peer Up with both OPENs, and an
// UPDATE with classic IPv4 NLRI and an IPv6 MP_REACH_NLRI.
func peerUpMsg(p peerHdr, sent, recv []byte) []byte {
	local := make([]byte, 20)
	return bmpMessage(bmp.MsgPeerUp, p.bytes(), local, sent, recv)
}

func mpReachIPv6(nlri []byte) []byte {
	nh := netip.MustParseAddr("2001:db8::1").As16()
	v := append([]byte{0, 2, 1, 16}, nh[:]...)
	return attr(0x80, 14, append(append(v, 0), nlri...))
}

// routeSummary renders the routes of one message compactly for comparison:
// family, prefix, path id and AS path.
func routeSummary(t *testing.T, evs []record.Event) []string {
	t.Helper()
	var out []string
	for _, ev := range evs {
		switch {
		case ev.Route != nil:
			r := ev.Route
			out = append(out, fmt.Sprintf("%s %s#%#x as%v", r.Family, r.Prefix, r.PathID, r.ASPath))
		case ev.Type == bmp.EventDecodeError:
			out = append(out, "error: "+ev.Data.(*bmp.DecodeError).Error)
		}
	}
	return out
}

// TestPeerStateSurvivesRestart shows that what the OPENs of a Peer Up
// negotiated — Add-Path per family and direction, the AS_PATH width — is
// what decodes the peer's Route Monitoring messages, and that it is kept on
// disk: a decoder reopened on the same directory (a restart) decodes every
// message exactly as before, including a record re-delivered from before a
// newer Peer Up of the same peer. Each message is chosen so that decoding
// without the state (A flag, content inference) reads it differently: only
// the state can produce the expected routes.
func TestPeerStateSurvivesRestart(t *testing.T) {
	mp4, mp6 := capab(1, 0, 1, 0, 1), capab(1, 0, 2, 0, 1)
	as4 := func(as uint32) []byte { return capab(65, u32(as)...) }
	// Add-Path tuples (RFC 7911): AFI, SAFI, mode 1 receive / 2 send.
	routerAP := capab(69, 0, 1, 1, 1, 0, 2, 1, 2) // IPv4: may receive; IPv6: may send
	peerAP := capab(69, 0, 1, 1, 2, 0, 2, 1, 1)   // IPv4: may send; IPv6: may receive

	apPeer := peerHdr{addr: "192.0.2.1", as: 65001, id: "192.0.2.1"}
	apPeerOut := apPeer
	apPeerOut.flags = bmp.FlagO | bmp.FlagL
	oldSpeaker := peerHdr{addr: "192.0.2.2", as: 65002, id: "192.0.2.2"}                    // A flag clear, yet a 2-byte session
	newSpeakerA := peerHdr{addr: "192.0.2.3", as: 65003, id: "192.0.2.3", flags: bmp.FlagA} // A flag set, yet a 4-byte session

	// Both readings of these bytes parse without /0 prefixes, so content
	// inference keeps the plain one: 10.0.1.0/24 and 10.0.2.0/24, or with
	// path ids one route 10.0.2.0/24 with path id 0x180a0001.
	v4NLRI := []byte{24, 10, 0, 1, 24, 10, 0, 2}
	// IPv6: 2001:d00::/24 and 2001:db8::/32, or 2001:db8::/32 with path id 0x1820010d.
	v6NLRI := []byte{24, 0x20, 0x01, 0x0d, 32, 0x20, 0x01, 0x0d, 0xb8}
	mixed := update(nil, [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001), attr(0x40, 3, []byte{192, 0, 2, 1}), mpReachIPv6(v6NLRI)}, v4NLRI)
	// An AS_PATH that fits both widths: 2-byte, two segments 65000 23456
	// and 65002; 4-byte, one segment 4259863456 33684970. With AS4_PATH
	// 4200000000 65002, as an old speaker's path carries a 4-byte ASN.
	dualWidth := attr(0x40, 2, []byte{2, 2, 0xfd, 0xe8, 0x5b, 0xa0, 2, 1, 0xfd, 0xea})
	as4Path := attr(0xc0, 17, append([]byte{2, 2}, append(u32(4200000000), u32(65002)...)...))
	oldSpeakerUpdate := update(nil, [][]byte{attr(0x40, 1, []byte{0}), dualWidth, attr(0x40, 3, []byte{192, 0, 2, 2}), as4Path}, []byte{16, 10, 2})
	// 2-byte: 65000 65001, 65002; 4-byte: 4259905001 33684970.
	dualWidth2 := attr(0x40, 2, []byte{2, 2, 0xfd, 0xe8, 0xfd, 0xe9, 2, 1, 0xfd, 0xea})
	newSpeakerUpdate := update(nil, [][]byte{attr(0x40, 1, []byte{0}), dualWidth2, attr(0x40, 3, []byte{192, 0, 2, 3})}, []byte{16, 10, 3})

	type step struct {
		name string
		seq  uint64
		msg  []byte
		// want is the routes with the state; nil for Peer Ups.
		want []string
		// stateless marks messages that decoding without the state must
		// read differently.
		stateless bool
	}
	steps := []step{
		{name: "peer up: add-path ipv4 peer→router, ipv6 router→peer", seq: 10,
			msg: peerUpMsg(apPeer, openMsg(65000, "192.0.2.254", mp4, mp6, as4(65000), routerAP), openMsg(65001, "192.0.2.1", mp4, mp6, as4(65001), peerAP))},
		{name: "adj-rib-in: path ids on ipv4 only", seq: 11, msg: bmpMessage(bmp.MsgRouteMonitoring, apPeer.bytes(), mixed), stateless: true,
			want: []string{"ipv4-unicast 10.0.2.0/24#0x180a0001 as[65001]", "ipv6-unicast 2001:d00::/24#0x0 as[65001]", "ipv6-unicast 2001:db8::/32#0x0 as[65001]"}},
		{name: "adj-rib-out: the reverse, path ids on ipv6 only", seq: 12, msg: bmpMessage(bmp.MsgRouteMonitoring, apPeerOut.bytes(), mixed), stateless: true,
			want: []string{"ipv4-unicast 10.0.1.0/24#0x0 as[65001]", "ipv4-unicast 10.0.2.0/24#0x0 as[65001]", "ipv6-unicast 2001:db8::/32#0x1820010d as[65001]"}},
		{name: "peer up: the peer is a 2-byte speaker", seq: 13,
			msg: peerUpMsg(oldSpeaker, openMsg(65000, "192.0.2.254", mp4, as4(65000)), openMsg(65002, "192.0.2.2", mp4))},
		{name: "2-byte session, A flag clear: 2-byte AS_PATH merged with AS4_PATH", seq: 14, msg: bmpMessage(bmp.MsgRouteMonitoring, oldSpeaker.bytes(), oldSpeakerUpdate), stateless: true,
			want: []string{"ipv4-unicast 10.2.0.0/16#0x0 as[65000 4200000000 65002]"}},
		{name: "peer up: both 4-byte speakers", seq: 15,
			msg: peerUpMsg(newSpeakerA, openMsg(65000, "192.0.2.254", mp4, as4(65000)), openMsg(65003, "192.0.2.3", mp4, as4(65003)))},
		{name: "4-byte session, A flag set: 4-byte AS_PATH", seq: 16, msg: bmpMessage(bmp.MsgRouteMonitoring, newSpeakerA.bytes(), newSpeakerUpdate), stateless: true,
			want: []string{"ipv4-unicast 10.3.0.0/16#0x0 as[4259905001 33684970]"}},
		{name: "peer up again: no add-path any more", seq: 20,
			msg: peerUpMsg(apPeer, openMsg(65000, "192.0.2.254", mp4, mp6, as4(65000)), openMsg(65001, "192.0.2.1", mp4, mp6, as4(65001)))},
		{name: "adj-rib-in after the second peer up: no path ids", seq: 21, msg: bmpMessage(bmp.MsgRouteMonitoring, apPeer.bytes(), mixed),
			want: []string{"ipv4-unicast 10.0.1.0/24#0x0 as[65001]", "ipv4-unicast 10.0.2.0/24#0x0 as[65001]", "ipv6-unicast 2001:d00::/24#0x0 as[65001]", "ipv6-unicast 2001:db8::/32#0x0 as[65001]"}},
	}
	decode := func(d *bmp.Decoder, st step) []string {
		t.Helper()
		var evs []record.Event
		rec := record.Record{Seq: st.seq, Kind: record.KindBMP, Source: router, Payload: st.msg}
		if err := d.Decode(rec, func(ev record.Event) { evs = append(evs, ev) }); err != nil {
			t.Fatal(err)
		}
		return routeSummary(t, evs)
	}
	open := func(dir string) *bmp.Decoder {
		t.Helper()
		d, err := bmp.NewDecoder(bmp.DecoderOptions{StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	dir := t.TempDir()
	d1 := open(dir)
	before := map[uint64][]string{}
	for _, st := range steps {
		got := decode(d1, st)
		if st.want == nil {
			continue
		}
		before[st.seq] = got
		if !slices.Equal(got, st.want) {
			t.Errorf("%s (seq %d):\n got  %q\n want %q", st.name, st.seq, got, st.want)
		}
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart: every record is re-delivered (the forwarder had not acked
	// them) and must decode exactly as before, each with the state of its
	// time, though the newest state of apPeer is the second Peer Up.
	d2 := open(dir)
	defer d2.Close()
	for _, st := range steps {
		if st.want == nil {
			continue
		}
		if got := decode(d2, st); !slices.Equal(got, before[st.seq]) {
			t.Errorf("after restart, %s (seq %d):\n got    %q\n before %q", st.name, st.seq, got, before[st.seq])
		}
	}
	// A new record after the restart takes the newest state of its peer.
	later := steps[1]
	later.seq = 30
	if got, want := decode(d2, later), steps[len(steps)-1].want; !slices.Equal(got, want) {
		t.Errorf("new record after restart:\n got  %q\n want %q", got, want)
	}
	later = steps[4]
	later.seq = 31
	if got := decode(d2, later); !slices.Equal(got, steps[4].want) {
		t.Errorf("new 2-byte session record after restart:\n got  %q\n want %q", got, steps[4].want)
	}

	// Without the state (a decoder on an empty directory that never saw
	// the Peer Ups), the same messages decode differently: the state is
	// what decides.
	d3 := open(t.TempDir())
	defer d3.Close()
	for _, st := range steps {
		if !st.stateless {
			continue
		}
		if got := decode(d3, st); slices.Equal(got, st.want) {
			t.Errorf("%s (seq %d) decodes the same without the peer's state: %q", st.name, st.seq, got)
		}
	}
}

// TestDecodeASWidth covers how the AS_PATH width is chosen — from the Peer
// Up's OPENs, from the A flag without one, and from the attribute's
// length when only the other width fits — and the RFC 6793 merge of
// AS4_PATH and AS4_AGGREGATOR on 2-byte sessions.
func TestDecodeASWidth(t *testing.T) {
	mp4 := capab(1, 0, 1, 0, 1)
	as4 := func(as uint32) []byte { return capab(65, u32(as)...) }
	peer := peerHdr{addr: "192.0.2.7", as: 65007, id: "192.0.2.7"}
	peerA := peer
	peerA.flags = bmp.FlagA
	session2 := peerUpMsg(peer, openMsg(65000, "192.0.2.254", mp4, as4(65000)), openMsg(65007, "192.0.2.7", mp4))
	session4 := peerUpMsg(peer, openMsg(65000, "192.0.2.254", mp4, as4(65000)), openMsg(65007, "192.0.2.7", mp4, as4(65007)))
	// The peer's OPEN has a capability longer than its parameter: its
	// capabilities are unknown.
	badOpen := bgpMsg(1, []byte{4, 0xfd, 0xef, 0, 90, 192, 0, 2, 7, 4, 2, 2, 65, 9})
	sessionUnknown := peerUpMsg(peer, openMsg(65000, "192.0.2.254", mp4, as4(65000)), badOpen)
	sessionUnknownA := peerUpMsg(peerA, openMsg(65000, "192.0.2.254", mp4, as4(65000)), badOpen)
	dualWidth := attr(0x40, 2, []byte{2, 2, 0xfd, 0xe8, 0xfd, 0xe9, 2, 1, 0xfd, 0xea})
	asPath2 := func(segs ...[]uint16) []byte {
		var b []byte
		for _, s := range segs {
			b = append(b, 2, byte(len(s)))
			for _, a := range s {
				b = binary.BigEndian.AppendUint16(b, a)
			}
		}
		return attr(0x40, 2, b)
	}
	seg4 := func(typ byte, asns ...uint32) []byte {
		b := []byte{typ, byte(len(asns))}
		for _, a := range asns {
			b = binary.BigEndian.AppendUint32(b, a)
		}
		return b
	}
	as4Path := func(segs ...[]byte) []byte { return attr(0xc0, 17, slices.Concat(segs...)) }
	aggr2 := attr(0xc0, 7, []byte{0x5b, 0xa0, 192, 0, 2, 99})         // AS_TRANS, 192.0.2.99
	aggrOld := attr(0xc0, 7, []byte{0xfd, 0xf1, 192, 0, 2, 9})        // 65009, 192.0.2.9
	as4Aggr := attr(0xc0, 18, append(u32(4200000001), 192, 0, 2, 99)) // 4200000001, 192.0.2.99
	rm := func(p peerHdr, attrs ...[]byte) []byte {
		all := append([][]byte{attr(0x40, 1, []byte{0})}, attrs...)
		all = append(all, attr(0x40, 3, []byte{192, 0, 2, 7}))
		return bmpMessage(bmp.MsgRouteMonitoring, p.bytes(), update(nil, all, []byte{16, 10, 7}))
	}
	tests := []struct {
		name       string
		msgs       [][]byte
		asPath     string
		aggregator string
		rawTypes   []uint8 // types in Attributes
		otherWidth float64
	}{
		{name: "2-byte session: AS_TRANS replaced from AS4_PATH",
			msgs:   [][]byte{session2, rm(peer, asPath2([]uint16{65007, 23456, 23456}), as4Path(seg4(2, 4200000001, 4200000002)))},
			asPath: "[65007 4200000001 4200000002]", rawTypes: []uint8{17}},
		{name: "2-byte session: AS4_AGGREGATOR replaces AS_TRANS in AGGREGATOR",
			msgs:   [][]byte{session2, rm(peer, asPath2([]uint16{65007, 23456}), aggr2, as4Path(seg4(2, 4200000001)), as4Aggr)},
			asPath: "[65007 4200000001]", aggregator: "4200000001:192.0.2.99", rawTypes: []uint8{17, 18}},
		{name: "2-byte session: AGGREGATOR not AS_TRANS, so both AS4 attributes are stale and ignored (RFC 6793 4.2.3)",
			msgs:   [][]byte{session2, rm(peer, asPath2([]uint16{65007, 23456}), aggrOld, as4Path(seg4(2, 4200000001)), as4Aggr)},
			asPath: "[65007 23456]", aggregator: "65009:192.0.2.9", rawTypes: []uint8{17, 18}},
		{name: "2-byte session: AS4_PATH longer than AS_PATH is ignored",
			msgs:   [][]byte{session2, rm(peer, asPath2([]uint16{23456}), as4Path(seg4(2, 4200000001, 4200000002)))},
			asPath: "[23456]", rawTypes: []uint8{17}},
		{name: "2-byte session: confederation segments of AS4_PATH are dropped",
			msgs:   [][]byte{session2, rm(peer, asPath2([]uint16{65007, 23456}), as4Path(seg4(3, 64512), seg4(2, 4200000001)))},
			asPath: "[65007 4200000001]", rawTypes: []uint8{17}},
		{name: "4-byte session: AS4_PATH is not merged, only kept raw",
			msgs:   [][]byte{session4, rm(peer, asPath4(65007, 23456), as4Path(seg4(2, 4200000001)))},
			asPath: "[65007 23456]", rawTypes: []uint8{17}},
		{name: "4-byte session, AS_PATH only fits 2-byte (FRR 8.0): read 2-byte, counted",
			msgs:   [][]byte{session4, rm(peer, asPath2([]uint16{65000}))},
			asPath: "[65000]", otherWidth: 1},
		{name: "2-byte session, AS_PATH only fits 4-byte: read 4-byte, counted",
			msgs:   [][]byte{session2, rm(peer, asPath4(65007, 4200000001))},
			asPath: "[65007 4200000001]", otherWidth: 1},
		{name: "no peer up, A flag set: 2-byte, AS4_PATH merged",
			msgs:   [][]byte{rm(peerA, asPath2([]uint16{65007, 23456}), as4Path(seg4(2, 4200000001)))},
			asPath: "[65007 4200000001]", rawTypes: []uint8{17}},
		{name: "no peer up, A flag clear: 4-byte",
			msgs:   [][]byte{rm(peer, dualWidth)},
			asPath: "[4259905001 33684970]"},
		{name: "no peer up, A flag set: 2-byte",
			msgs:   [][]byte{rm(peerA, dualWidth)},
			asPath: "[65000 65001 65002]"},
		{name: "peer up with an unreadable OPEN, A flag clear: 4-byte",
			msgs:   [][]byte{sessionUnknown, rm(peer, dualWidth)},
			asPath: "[4259905001 33684970]"},
		{name: "peer up with an unreadable OPEN, A flag set: 2-byte",
			msgs:   [][]byte{sessionUnknownA, rm(peerA, dualWidth)},
			asPath: "[65000 65001 65002]"},
		{name: "2-byte session overrides the A flag",
			msgs:   [][]byte{session2, rm(peer, dualWidth)},
			asPath: "[65000 65001 65002]"},
		{name: "4-byte session overrides the A flag",
			msgs:   [][]byte{session4, rm(peerA, dualWidth)},
			asPath: "[4259905001 33684970]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, reg := newDecoder(t, "")
			evs := decodeAll(t, d, tt.msgs...)
			if len(tt.msgs) > 1 && evs[0][0].Type != bmp.EventPeerUp {
				t.Fatalf("peer up: %s", jsonOf(t, evs[0]))
			}
			r := one(t, evs[len(evs)-1], bmp.EventRoute).Route
			var raw []uint8
			for _, a := range r.Attributes {
				raw = append(raw, a.Type)
			}
			if got := fmt.Sprint(r.ASPath); got != tt.asPath || r.Aggregator != tt.aggregator || !slices.Equal(raw, tt.rawTypes) {
				t.Errorf("as_path %s aggregator %q raw attributes %v, want %s %q %v", got, r.Aggregator, raw, tt.asPath, tt.aggregator, tt.rawTypes)
			}
			if got := testutil.ToFloat64(counterOf(t, reg, "bgpedge_bmp_aspath_other_width_total")); got != tt.otherWidth {
				t.Errorf("bgpedge_bmp_aspath_other_width_total = %v, want %v", got, tt.otherWidth)
			}
		})
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

// TestLocRIBAddPathPerSession: Loc-RIB Peer Ups add up within one BMP
// session, but a new session starts afresh: an Add-Path family the router
// announced before it reconnected is not used to read its routes after.
func TestLocRIBAddPathPerSession(t *testing.T) {
	d, _ := newDecoder(t, t.TempDir())
	locRIB := peerHdr{typ: bmp.PeerTypeLocRIB, flags: bmp.FlagF, addr: "0.0.0.0", as: 65001, id: "192.0.2.9"}
	as4 := capab(65, u32(65001)...)
	mp := capab(1, 0, 1, 0, 1)           // IPv4 unicast
	addPathBoth := capab(69, 0, 1, 1, 3) // IPv4 unicast, send/receive
	withAddPath := openMsg(23456, "192.0.2.9", as4, mp, addPathBoth)
	without := openMsg(23456, "192.0.2.9", as4, mp)
	// Two plain prefixes; read as Add-Path they would be one prefix with a
	// path id made of the first.
	plain := update(nil, [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001), attr(0x40, 3, []byte{192, 0, 2, 1})},
		[]byte{24, 198, 51, 100, 24, 198, 51, 101})
	withPathID := update(nil, [][]byte{attr(0x40, 1, []byte{0}), asPath4(65001), attr(0x40, 3, []byte{192, 0, 2, 1})},
		[]byte{24, 10, 0, 0, 24, 198, 51, 100}) // path id 0x180a0000, or 10.0.0.0/24 and 198.51.100.0/24 read plain
	var routes []string
	for i, m := range []struct {
		source string
		msg    []byte
	}{
		{"203.0.113.9:1000", peerUpMsg(locRIB, withAddPath, withAddPath)},
		{"203.0.113.9:2000", peerUpMsg(locRIB, without, without)}, // the router reconnected
		{"203.0.113.9:2000", bmpMessage(bmp.MsgRouteMonitoring, locRIB.bytes(), plain)},
		// Within one session (Huawei VRP sends one Loc-RIB Peer Up per
		// family) the Peer Ups add up: the first one's Add-Path stays.
		{"203.0.113.9:3000", peerUpMsg(locRIB, withAddPath, withAddPath)},
		{"203.0.113.9:3000", peerUpMsg(locRIB, without, without)},
		{"203.0.113.9:3000", bmpMessage(bmp.MsgRouteMonitoring, locRIB.bytes(), withPathID)},
	} {
		rec := record.Record{Seq: uint64(i + 1), Kind: record.KindBMP, Source: m.source, Time: time.Unix(1700000001, 0).UTC(), Payload: m.msg}
		if err := d.Decode(rec, func(ev record.Event) {
			if ev.Type == bmp.EventRoute {
				routes = append(routes, fmt.Sprintf("%s/%d", ev.Route.Prefix, ev.Route.PathID))
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"198.51.100.0/24/0", "198.51.101.0/24/0", "198.51.100.0/24/403308544"}; !slices.Equal(routes, want) {
		t.Fatalf("routes %v, want %v", routes, want)
	}
}
