package exabgp

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// packetsOnly turns a decoded update event into what exaBGP sends with the
// `packets` api option and no `parsed`: neighbor.message holds only the
// category and the hex header and body.
func packetsOnly(t *testing.T, m *Message, header, body string, keepNegotiated bool) *Message {
	t.Helper()
	if m.Neighbor == nil {
		t.Fatal("event without neighbor")
	}
	c := *m
	n := *m.Neighbor
	c.Header, c.Body = "", ""
	two := 2
	n.Message = &UpdateMessage{Category: &two, Header: header, Body: body}
	if !keepNegotiated {
		n.Negotiated = nil
	}
	c.Neighbor = &n
	return &c
}

func mustParse(t *testing.T, line []byte) *Message {
	t.Helper()
	m, err := ParseEvent(line)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, line)
	}
	return m
}

func eventsJSON(t *testing.T, evs []record.Event) string {
	t.Helper()
	var b strings.Builder
	for _, e := range evs {
		j, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func onlyRoutes(evs []record.Event) []record.Event {
	var out []record.Event
	for _, e := range evs {
		if e.Type == TypeRoute {
			out = append(out, e)
		}
	}
	return out
}

// TestNormalisePacketsEqualsParsed: exaBGP 4.2.21's live updates carry both
// the parsed form and the hex of the same message. Decoding the hex alone
// (as with `packets` and no `parsed`) gives exactly the events the parsed
// form gives, with and without the negotiated block in the event.
func TestNormalisePacketsEqualsParsed(t *testing.T) {
	dir := testenv.Shared(t, "exabgp")
	files, err := filepath.Glob(filepath.Join(dir, "live-4.2.21", "update_*_with_header_body_*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("only %d live samples with header and body", len(files))
	}
	exact := 0
	for _, f := range files {
		line, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m := mustParse(t, line)
		if m.Header == "" || m.Body == "" || m.Neighbor.Message == nil || m.Neighbor.Message.Update == nil {
			t.Fatalf("%s: sample lost its parsed form or hex", f)
		}
		parsed, err := Normalise(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(onlyRoutes(parsed)) == 0 {
			t.Fatalf("%s: parsed form gives no route", f)
		}
		for _, keep := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/negotiated=%v", filepath.Base(f), keep), func(t *testing.T) {
				got, err := Normalise(packetsOnly(t, m, m.Header, m.Body, keep))
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(f, "_flow_") {
					// Flowspec rules are written by GoBGP, not as exaBGP's
					// rule text: same routes, families, actions and attributes.
					sameRoutesBut(t, parsed, got, func(r *record.Route) { r.Prefix, r.NLRI, r.ExaBGP["nlri"] = "", nil, nil })
					return
				}
				if g, w := eventsJSON(t, got), eventsJSON(t, parsed); g != w {
					t.Fatalf("from hex:\n%s\nparsed:\n%s", g, w)
				}
				exact++
			})
		}
	}
	if exact < 4 {
		t.Errorf("only %d exact comparisons", exact)
	}
}

// sameRoutesBut compares route events after blanking what may differ.
func sameRoutesBut(t *testing.T, want, got []record.Event, blank func(*record.Route)) {
	t.Helper()
	want, got = onlyRoutes(want), onlyRoutes(got)
	if len(want) != len(got) {
		t.Fatalf("%d routes from hex, %d parsed:\n%s\n%s", len(got), len(want), eventsJSON(t, got), eventsJSON(t, want))
	}
	for i := range want {
		w, g := want[i], got[i]
		wr, gr := *w.Route, *g.Route
		if wr.ExaBGP != nil {
			wr.ExaBGP = maps.Clone(wr.ExaBGP)
		}
		if gr.ExaBGP != nil {
			gr.ExaBGP = maps.Clone(gr.ExaBGP)
		}
		if wr.ExaBGP == nil {
			wr.ExaBGP = map[string]json.RawMessage{}
		}
		if gr.ExaBGP == nil {
			gr.ExaBGP = map[string]json.RawMessage{}
		}
		if gr.Prefix == "" && !gr.EndOfRIB {
			t.Errorf("route %d from hex without prefix", i)
		}
		blank(&wr)
		blank(&gr)
		for _, r := range []*record.Route{&wr, &gr} {
			for k, v := range r.ExaBGP {
				if v == nil {
					delete(r.ExaBGP, k)
				}
			}
			if len(r.ExaBGP) == 0 {
				r.ExaBGP = nil
			}
		}
		w.Route, g.Route = &wr, &gr
		if gj, wj := eventsJSON(t, []record.Event{g}), eventsJSON(t, []record.Event{w}); gj != wj {
			t.Errorf("route %d from hex:\n%s\nparsed:\n%s", i, gj, wj)
		}
	}
}

// undecodable are upstream tests GoBGP cannot decode, with its error.
func undecodable() map[string]string {
	return map[string]string{
		"bgp-evpn-1": "Unknown EVPN Route type: 8", // exaBGP's test has a route type GoBGP lacks
	}
}

var nonHex = regexp.MustCompile(`[^0-9A-Fa-f]`)

// TestNormalisePacketsUpstreamQA: exaBGP's own decoding tests give an
// UPDATE's hex and exaBGP's parsed JSON of it. Decoded from hex, IP unicast
// updates give exactly the parsed events; other families (flowspec, EVPN,
// BGP-LS, SR policy, VPN with Prefix-SID) the same routes (family, action,
// next hop, path attributes), with GoBGP's readable NLRI as prefix.
func TestNormalisePacketsUpstreamQA(t *testing.T) {
	dir := testenv.Shared(t, "exabgp")
	var files []string
	for _, g := range []string{"upstream-qa/*/decoding/*", "upstream-qa/v5.0.13/*"} {
		fs, err := filepath.Glob(filepath.Join(dir, g))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, fs...)
	}
	var exact, similar int
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		if len(lines) < 3 || !strings.HasPrefix(lines[0], "update") {
			continue // open messages, bare NLRI
		}
		name, _ := filepath.Rel(dir, f)
		t.Run(name, func(t *testing.T) {
			msg, err := hex.DecodeString(nonHex.ReplaceAllString(lines[1], ""))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(msg, bytes.Repeat([]byte{0xff}, 16)) {
				// Some tests give the body alone: add its header.
				msg = append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
					byte((19 + len(msg)) >> 8), byte(19 + len(msg)), 2}, msg...)
			}
			m := mustParse(t, []byte(strings.Join(lines[2:], "")))
			parsed, err := Normalise(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Normalise(packetsOnly(t, m, "0x"+hex.EncodeToString(msg[:19]), "0x"+strings.ToUpper(hex.EncodeToString(msg[19:])), false))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range got {
				if e.Type == TypeDecodeError {
					if want, ok := undecodable()[filepath.Base(f)]; ok && strings.Contains(e.Data.(packetErrorData).Error, want) {
						// Kept raw, reported.
						if len(got) != 2 || got[0].Type != "update" {
							t.Fatalf("undecodable update not kept: %s", eventsJSON(t, got))
						}
						similar++
						return
					}
					t.Fatalf("decode error: %+v", e.Data)
				}
			}
			if len(onlyRoutes(parsed)) == 0 {
				// Attributes only: one update event either way.
				if len(got) != 1 || got[0].Type != "update" {
					t.Fatalf("attribute-only update gave %s", eventsJSON(t, got))
				}
				similar++
				return
			}
			if strings.HasSuffix(lines[0], "ipv4 unicast") || strings.HasSuffix(lines[0], "ipv6 unicast") {
				if g, w := eventsJSON(t, got), eventsJSON(t, parsed); g != w {
					t.Fatalf("from hex:\n%s\nparsed:\n%s", g, w)
				}
				exact++
				return
			}
			sameRoutesBut(t, parsed, got, func(r *record.Route) {
				r.Prefix, r.NLRI, r.RD, r.Labels = "", nil, "", nil
				r.ExaBGP["nlri"] = nil
				// Attributes exaBGP names (Prefix-SID, tunnel encapsulation,
				// BGP-LS) are kept by type and value instead.
				for k := range r.ExaBGP {
					if k != "extended-community" {
						r.ExaBGP[k] = nil
					}
				}
				r.Attributes = nil
			})
			similar++
		})
	}
	t.Logf("%d exact, %d same routes", exact, similar)
	if exact < 2 || similar < 10 {
		t.Errorf("too few comparisons: %d exact, %d similar", exact, similar)
	}
}

// TestNormalisePacketsEndOfRIB: the live packets-only sample (4.2.21, `send
// { packets; }`) is an End-of-RIB exaBGP sent; it gives the event the
// parsed End-of-RIB gives, and no update event any more.
func TestNormalisePacketsEndOfRIB(t *testing.T) {
	line, err := os.ReadFile(filepath.Join(testenv.Shared(t, "exabgp"), "live-4.2.21", "update_packets_send.json"))
	if err != nil {
		t.Fatal(err)
	}
	m := mustParse(t, line)
	got, err := Normalise(m)
	if err != nil {
		t.Fatal(err)
	}
	eor := *m
	n := *m.Neighbor
	n.Message = &UpdateMessage{}
	n.Message.EOR = &struct {
		AFI  string `json:"afi"`
		SAFI string `json:"safi"`
	}{"ipv4", "unicast"}
	eor.Neighbor = &n
	want, err := Normalise(&eor)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := eventsJSON(t, got), eventsJSON(t, want); g != w {
		t.Fatalf("from hex:\n%s\nparsed:\n%s", g, w)
	}
	if got[0].Route == nil || !got[0].Route.EndOfRIB || got[0].Route.RIB != "adj-rib-out" {
		t.Fatalf("not a sent End-of-RIB: %s", g(t, got))
	}
	// An MP End-of-RIB: only an empty MP_UNREACH_NLRI for ipv6 unicast.
	mp := packetsOnly(t, m, "", "0x00000006"+"800F03000201", false)
	got, err = Normalise(mp)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Route == nil || !got[0].Route.EndOfRIB || got[0].Route.Family != "ipv6-unicast" {
		t.Fatalf("mp end-of-rib: %s", g(t, got))
	}
}

func g(t *testing.T, evs []record.Event) string { return eventsJSON(t, evs) }

// TestNormaliserNegotiatedAddPath: one UPDATE whose bytes read differently
// with and without Add-Path. A `negotiated` event announcing Add-Path for
// the session makes the Normaliser decode the path id; the session going
// down forgets it; Add-Path of another session or direction does not apply.
func TestNormaliserNegotiatedAddPath(t *testing.T) {
	// exaBGP's decoding test ipv4-unicast-1: NLRI 00000000 20 01010101.
	const body = "0x0000001C4001010040020040030465016501800404000000C840050400000064000000002001010101"
	ev := func(typ, rest string) []byte {
		return []byte(`{"exabgp":"4.0.1","type":"` + typ + `","neighbor":{"address":{"local":"127.0.0.1","peer":"127.0.0.2"},"asn":{"local":65001,"peer":65002},` + rest + `}}`)
	}
	negotiated := func(recv string) []byte {
		return ev("negotiated", `"negotiated":{"asn4":true,"add_path":{"send":[],"receive":[`+recv+`]}}`)
	}
	update := ev("update", `"direction":"receive","message":{"category":2,"header":"0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF003C02","body":"`+body+`"}`)
	prefixes := func(z *Normaliser) string {
		evs, err := z.Normalise(mustParse(t, update))
		if err != nil {
			t.Fatal(err)
		}
		var ps []string
		for _, e := range evs {
			if e.Route == nil {
				t.Fatalf("not a route: %s", eventsJSON(t, evs))
			}
			ps = append(ps, fmt.Sprintf("%s#%d@%s", e.Route.Prefix, e.Route.PathID, e.Route.NextHop))
		}
		return strings.Join(ps, " ")
	}
	feed := func(z *Normaliser, line []byte) {
		if _, err := z.Normalise(mustParse(t, line)); err != nil {
			t.Fatal(err)
		}
	}
	const plain = "0.0.0.0/0#0@101.1.101.1 0.0.0.0/0#0@101.1.101.1 0.0.0.0/0#0@101.1.101.1 0.0.0.0/0#0@101.1.101.1 1.1.1.1/32#0@101.1.101.1"
	const addPath = "1.1.1.1/32#0@101.1.101.1"
	var z Normaliser
	if got := prefixes(&z); got != plain {
		t.Fatalf("no negotiated event: %s", got)
	}
	feed(&z, negotiated(`"ipv4 unicast"`))
	if got := prefixes(&z); got != addPath {
		t.Fatalf("after negotiated add-path: %s", got)
	}
	// The stateless Normalise knows nothing of it.
	if evs, _ := Normalise(mustParse(t, update)); len(evs) != 5 {
		t.Fatalf("stateless Normalise: %d events", len(evs))
	}
	feed(&z, ev("state", `"state":"down","reason":"peer reset"`))
	if got := prefixes(&z); got != plain {
		t.Fatalf("after session down: %s", got)
	}
	feed(&z, negotiated(`"ipv6 unicast"`))
	if got := prefixes(&z); got != plain {
		t.Fatalf("add-path of another family applied: %s", got)
	}
	other := bytes.Replace(negotiated(`"ipv4 unicast"`), []byte(`"peer":"127.0.0.2"`), []byte(`"peer":"127.0.0.9"`), 1)
	feed(&z, other)
	if got := prefixes(&z); got != plain {
		t.Fatalf("add-path of another neighbor applied: %s", got)
	}
	// The negotiated block inside the event wins over the memory.
	inEvent := bytes.Replace(update, []byte(`"direction"`), []byte(`"negotiated":{"asn4":true,"add_path":{"send":[],"receive":["ipv4 unicast"]}},"direction"`), 1)
	if evs, _ := z.Normalise(mustParse(t, inEvent)); len(evs) != 1 || evs[0].Route.Prefix != "1.1.1.1/32" {
		t.Fatalf("negotiated in the event: %s", eventsJSON(t, evs))
	}
}

// TestNormaliserNegotiatedAS2: a session without 4-byte AS sends AS_PATH
// with AS_TRANS and the real path in AS4_PATH; decoded with the session's
// negotiated asn4 false, the route has the 4-byte path exaBGP would print.
func TestNormaliserNegotiatedAS2(t *testing.T) {
	attrs := []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(0),
		bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAsPathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint16{65001, 23456, 23456})}),
		bgp.NewPathAttributeAs4Path([]*bgp.As4PathParam{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{4200000001, 4200000002})}),
	}
	for _, mk := range []func() (bgp.PathAttributeInterface, error){
		func() (bgp.PathAttributeInterface, error) {
			return bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.1"))
		},
		func() (bgp.PathAttributeInterface, error) {
			return bgp.NewPathAttributeAggregator(uint16(23456), netip.MustParseAddr("10.0.0.1"))
		},
		func() (bgp.PathAttributeInterface, error) {
			return bgp.NewPathAttributeAs4Aggregator(4200000002, netip.MustParseAddr("10.0.0.1"))
		},
	} {
		a, err := mk()
		if err != nil {
			t.Fatal(err)
		}
		attrs = append(attrs, a)
	}
	nlri, err := bgp.NewIPAddrPrefix(netip.MustParsePrefix("198.51.100.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := bgp.NewBGPUpdateMessage(nil, attrs, []bgp.PathNLRI{{NLRI: nlri}}).Serialize(&bgp.MarshallingOption{Use2ByteAS: true})
	if err != nil {
		t.Fatal(err)
	}
	neg := `"negotiated":{"asn4":false,"add_path":{"send":[],"receive":[]}},`
	line := []byte(`{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.1","peer":"127.0.0.2"},"asn":{"local":65001,"peer":65002},` + neg +
		`"direction":"receive","message":{"category":2,"header":"0x` + hex.EncodeToString(msg[:19]) + `","body":"0x` + hex.EncodeToString(msg[19:]) + `"}}}`)
	evs, err := Normalise(mustParse(t, line))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Route == nil {
		t.Fatalf("got %s", eventsJSON(t, evs))
	}
	r := evs[0].Route
	if fmt.Sprint(r.ASPath) != "[65001 4200000001 4200000002]" || r.Aggregator != "4200000002:10.0.0.1" || r.Prefix != "198.51.100.0/24" || r.NextHop != "192.0.2.1" {
		t.Fatalf("as2 session: %+v", r)
	}
	// The same bytes read as a 4-byte AS session (the default) are wrong,
	// which is why the negotiated block matters.
	evs, _ = Normalise(mustParse(t, bytes.Replace(line, []byte(neg), nil, 1)))
	for _, e := range evs {
		if e.Route != nil && fmt.Sprint(e.Route.ASPath) == "[65001 4200000001 4200000002]" {
			t.Fatal("2-byte AS path decoded right without negotiated asn4 false")
		}
	}
	// An AGGREGATOR that is not AS_TRANS next to AS4_AGGREGATOR: an OLD
	// speaker aggregated after the AS4 attributes were attached, so both are
	// stale and ignored (RFC 6793 4.2.3).
	old, err := bgp.NewPathAttributeAggregator(uint16(65009), netip.MustParseAddr("10.0.0.9"))
	if err != nil {
		t.Fatal(err)
	}
	attrs[4] = old
	msg, err = bgp.NewBGPUpdateMessage(nil, attrs, []bgp.PathNLRI{{NLRI: nlri}}).Serialize(&bgp.MarshallingOption{Use2ByteAS: true})
	if err != nil {
		t.Fatal(err)
	}
	line = []byte(`{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.1","peer":"127.0.0.2"},"asn":{"local":65001,"peer":65002},` + neg +
		`"direction":"receive","message":{"category":2,"header":"0x` + hex.EncodeToString(msg[:19]) + `","body":"0x` + hex.EncodeToString(msg[19:]) + `"}}}`)
	evs, err = Normalise(mustParse(t, line))
	if err != nil || len(evs) != 1 || evs[0].Route == nil {
		t.Fatalf("got %s, %v", eventsJSON(t, evs), err)
	}
	if r := evs[0].Route; fmt.Sprint(r.ASPath) != "[65001 23456 23456]" || r.Aggregator != "65009:10.0.0.9" {
		t.Fatalf("stale AS4 attributes applied: as_path %v aggregator %s", r.ASPath, r.Aggregator)
	}
}

// TestNormalisePacketsDecodeError: a raw UPDATE that does not decode is
// never dropped: its update event keeps the hex, a decode-error event
// follows, and the Normaliser counts it.
func TestNormalisePacketsDecodeError(t *testing.T) {
	const hdr = "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF001B02"
	tests := []struct {
		name, header, body, err string
	}{
		{"truncated nlri", "", "0x0000000018C00002" + "20C0", "undecodable update packet"},
		{"withdrawn length beyond body", "", "0x00FF18C000020000", "undecodable update packet"},
		{"bad hex", "", "0xZZ", "body"},
		{"header length", hdr, "0x0000000018C0000218", "header length 27 for a body of 9 bytes"},
		{"not an update", "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF001B04", "0x000418C000020000", "message type 4 is no update"},
		{"short header", "0xFFFF001B02", "0x000418C000020000", "header of 5 bytes"},
	}
	var z Normaliser
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := []byte(`{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.1","peer":"127.0.0.2"},"asn":{"local":65001,"peer":65002},"direction":"receive","message":{"category":2,"header":"` + tt.header + `","body":"` + tt.body + `"}}}`)
			evs, err := z.Normalise(mustParse(t, line))
			if err != nil {
				t.Fatalf("error instead of events: %v", err)
			}
			if len(evs) != 2 || evs[0].Type != "update" || evs[1].Type != TypeDecodeError {
				t.Fatalf("got %s", eventsJSON(t, evs))
			}
			d, ok := evs[0].Data.(sessionData)
			if !ok || d.Body != tt.body || d.Header != tt.header || d.Category == nil || *d.Category != 2 {
				t.Fatalf("raw message not kept: %+v", evs[0].Data)
			}
			pe, ok := evs[1].Data.(packetErrorData)
			if !ok || !strings.Contains(pe.Error, tt.err) || pe.Body != tt.body || evs[1].Peer == nil || evs[1].Peer.Address != "127.0.0.2" {
				t.Fatalf("decode error %+v, want %q", evs[1], tt.err)
			}
			if got := z.DecodeErrors.Load(); got != uint64(i+1) {
				t.Fatalf("counted %d decode errors, want %d", got, i+1)
			}
		})
	}
}

// TestNormaliserBounded: the memory of negotiated sessions stays bounded
// however many neighbors the input names.
func TestNormaliserBounded(t *testing.T) {
	var z Normaliser
	for i := range maxSessionCaps + 100 {
		line := fmt.Sprintf(`{"exabgp":"4.0.1","type":"negotiated","neighbor":{"address":{"local":"127.0.0.1","peer":"10.0.%d.%d"},"asn":{"local":1,"peer":2},"negotiated":{"asn4":true,"add_path":{"send":[],"receive":["ipv4 unicast"]}}}}`, i/256, i%256)
		if _, err := z.Normalise(mustParse(t, []byte(line))); err != nil {
			t.Fatal(err)
		}
	}
	z.mu.Lock()
	n := len(z.sessions)
	z.mu.Unlock()
	if n != maxSessionCaps {
		t.Fatalf("%d sessions remembered, want %d", n, maxSessionCaps)
	}
}

// TestNormalisePacketsMixed: one UPDATE with classic and MP withdrawals, an
// announcement and every attribute kind gives, from hex, the events of
// exaBGP's parsed form of it (written here as 4.2 prints it).
func TestNormalisePacketsMixed(t *testing.T) {
	attrs := []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(2),
		bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{65001, 4200000001})}),
		bgp.NewPathAttributeMultiExitDisc(7),
		bgp.NewPathAttributeLocalPref(200),
		bgp.NewPathAttributeAtomicAggregate(),
		bgp.NewPathAttributeCommunities([]uint32{65001<<16 | 100, 0xFFFFFF01}),
		bgp.NewPathAttributeLargeCommunities([]*bgp.LargeCommunity{bgp.NewLargeCommunity(65001, 1, 2)}),
		bgp.NewPathAttributeExtendedCommunities([]bgp.ExtendedCommunityInterface{bgp.NewTwoOctetAsSpecificExtended(bgp.EC_SUBTYPE_ROUTE_TARGET, 65001, 100, true)}),
		bgp.NewPathAttributeUnknown(bgp.BGP_ATTR_FLAG_OPTIONAL|bgp.BGP_ATTR_FLAG_TRANSITIVE, 0x99, []byte{0xbe, 0xef}),
	}
	for _, mk := range []func() (bgp.PathAttributeInterface, error){
		func() (bgp.PathAttributeInterface, error) {
			return bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.1"))
		},
		func() (bgp.PathAttributeInterface, error) {
			return bgp.NewPathAttributeAggregator(uint32(65001), netip.MustParseAddr("10.0.0.1"))
		},
		func() (bgp.PathAttributeInterface, error) {
			return bgp.NewPathAttributeOriginatorId(netip.MustParseAddr("10.0.0.8"))
		},
		func() (bgp.PathAttributeInterface, error) {
			return bgp.NewPathAttributeClusterList([]netip.Addr{netip.MustParseAddr("10.0.0.9")})
		},
		func() (bgp.PathAttributeInterface, error) {
			v6, err := bgp.NewIPAddrPrefix(netip.MustParsePrefix("2001:db8:9::/48"))
			if err != nil {
				return nil, err
			}
			return bgp.NewPathAttributeMpUnreachNLRI(bgp.RF_IPv6_UC, []bgp.PathNLRI{{NLRI: v6}})
		},
	} {
		a, err := mk()
		if err != nil {
			t.Fatal(err)
		}
		attrs = append(attrs, a)
	}
	prefix := func(s string) bgp.PathNLRI {
		p, err := bgp.NewIPAddrPrefix(netip.MustParsePrefix(s))
		if err != nil {
			t.Fatal(err)
		}
		return bgp.PathNLRI{NLRI: p}
	}
	msg, err := bgp.NewBGPUpdateMessage([]bgp.PathNLRI{prefix("10.9.0.0/16")}, attrs, []bgp.PathNLRI{prefix("198.51.100.0/24"), prefix("203.0.113.0/25")}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	head := `{ "exabgp": "4.0.1", "time": 1795238477.3211005, "type": "update", "neighbor": { "address": { "local": "127.0.0.3", "peer": "127.0.0.2" }, "asn": { "local": 65002, "peer": 65001 }, "direction": "receive", "message": `
	parsedLine := head + `{ "update": { "attribute": { "origin": "incomplete", "as-path": [ 65001, 4200000001 ], "confederation-path": [], "med": 7, "local-preference": 200, "atomic-aggregate": true, "aggregator": "65001:10.0.0.1", "community": [ [ 65001, 100 ], [ 65535, 65281 ] ], "originator-id": "10.0.0.8", "cluster-list": [ "10.0.0.9" ], "extended-community": [ { "value": 842127122628708, "string": "target:65001:100" } ], "large-community": [ [ 65001, 1, 2 ] ], "attribute-0x99-0xC0": "0xBEEF" }, ` +
		`"announce": { "ipv4 unicast": { "192.0.2.1": [ { "nlri": "198.51.100.0/24" }, { "nlri": "203.0.113.0/25" } ] } }, "withdraw": { "ipv4 unicast": [ { "nlri": "10.9.0.0/16" } ], "ipv6 unicast": [ { "nlri": "2001:db8:9::/48" } ] } } } } }`
	packetsLine := head + `{ "category": 2, "header": "0x` + hex.EncodeToString(msg[:19]) + `", "body": "0x` + hex.EncodeToString(msg[19:]) + `" } } }`
	want, err := Normalise(mustParse(t, []byte(parsedLine)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := Normalise(mustParse(t, []byte(packetsLine)))
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 4 {
		t.Fatalf("parsed form gives %d events", len(want))
	}
	if g, w := eventsJSON(t, got), eventsJSON(t, want); g != w {
		t.Fatalf("from hex:\n%s\nparsed:\n%s", g, w)
	}
}

// TestNormaliserAddPathPerDirection: a negotiated event carries Add-Path for
// both directions; a received UPDATE takes the receive set, a sent one the
// send set.
func TestNormaliserAddPathPerDirection(t *testing.T) {
	const body = "0x0000001C4001010040020040030465016501800404000000C840050400000064000000002001010101"
	line := func(typ, rest string) []byte {
		return []byte(`{"exabgp":"4.0.1","type":"` + typ + `","neighbor":{"address":{"local":"127.0.0.1","peer":"127.0.0.2"},"asn":{"local":65001,"peer":65002},` + rest + `}}`)
	}
	update := func(direction string) []byte {
		return line("update", `"direction":"`+direction+`","message":{"category":2,"header":"0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF003C02","body":"`+body+`"}`)
	}
	var z Normaliser
	if _, err := z.Normalise(mustParse(t, line("negotiated", `"negotiated":{"asn4":true,"add_path":{"send":["ipv4 unicast"],"receive":[]}}`))); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		direction string
		routes    int // the body holds 1 route with a path id, or 5 (four /0) without
	}{{"receive", 5}, {"send", 1}} {
		evs, err := z.Normalise(mustParse(t, update(tt.direction)))
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != tt.routes {
			t.Errorf("%s: %d events, want %d: %s", tt.direction, len(evs), tt.routes, eventsJSON(t, evs))
		}
	}
}
