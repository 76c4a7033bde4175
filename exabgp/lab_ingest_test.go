package exabgp

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

const (
	labV4Routes = 1000
	labV6Routes = 100
	labFlows    = 10
	markerRoute = "198.51.100.0/24"
)

func v4Prefix(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i>>8), byte(i), 0}), 24)
}

func v6Prefix(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/48", i+1))
}

func flowNLRI(t testing.TB, i int) bgp.NLRI {
	t.Helper()
	comps, err := bgp.ParseFlowSpecComponents(bgp.RF_FS_IPv4_UC, fmt.Sprintf("destination 203.0.113.%d/32 protocol tcp destination-port ==80", i))
	if err != nil {
		t.Fatal(err)
	}
	n, err := bgp.NewFlowSpecUnicast(bgp.RF_FS_IPv4_UC, comps)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// labRoutes builds GoBGP paths with every attribute kind.
func labRoutes(t testing.TB, withdraw bool) []*pathSpec {
	t.Helper()
	var out []*pathSpec
	nh4, _ := bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.254"))
	for i := range labV4Routes {
		nlri, _ := bgp.NewIPAddrPrefix(v4Prefix(i))
		rt, _ := bgp.ParseExtendedCommunity(bgp.EC_SUBTYPE_ROUTE_TARGET, fmt.Sprintf("65001:%d", i))
		out = append(out, &pathSpec{fam: bgp.RF_IPv4_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(0),
			bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{65010, uint32(70000 + i)})}),
			nh4,
			bgp.NewPathAttributeMultiExitDisc(uint32(i)),
			bgp.NewPathAttributeLocalPref(200),
			bgp.NewPathAttributeCommunities([]uint32{65001<<16 | uint32(i), uint32(bgp.COMMUNITY_NO_EXPORT)}),
			bgp.NewPathAttributeLargeCommunities([]*bgp.LargeCommunity{bgp.NewLargeCommunity(65001, 1, uint32(i))}),
			bgp.NewPathAttributeExtendedCommunities([]bgp.ExtendedCommunityInterface{rt}),
		}})
	}
	for i := range labV6Routes {
		nlri, _ := bgp.NewIPAddrPrefix(v6Prefix(i))
		mp, _ := bgp.NewPathAttributeMpReachNLRI(bgp.RF_IPv6_UC, []bgp.PathNLRI{{NLRI: nlri}}, netip.MustParseAddr("2001:db8::254"))
		out = append(out, &pathSpec{fam: bgp.RF_IPv6_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(2), mp, bgp.NewPathAttributeLocalPref(100),
		}})
	}
	for i := range labFlows {
		nlri := flowNLRI(t, i)
		mp, _ := bgp.NewPathAttributeMpReachNLRI(bgp.RF_FS_IPv4_UC, []bgp.PathNLRI{{NLRI: nlri}})
		out = append(out, &pathSpec{fam: bgp.RF_FS_IPv4_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(0), mp, bgp.NewPathAttributeLocalPref(100),
			bgp.NewPathAttributeExtendedCommunities([]bgp.ExtendedCommunityInterface{bgp.NewTrafficRateExtended(0, 0)}),
		}})
	}
	for _, p := range out {
		p.withdraw = withdraw
	}
	return out
}

type pathSpec struct {
	fam      bgp.Family
	nlri     bgp.NLRI
	attrs    []bgp.PathAttributeInterface
	withdraw bool
}

func (g *gobgpPeer) apply(t testing.TB, specs []*pathSpec) {
	t.Helper()
	for _, s := range specs {
		p := mustPath(t, s.fam, s.nlri, s.withdraw, s.attrs...)
		var err error
		if s.withdraw {
			err = g.s.DeletePath(apiutilDelete(p))
		} else {
			_, err = g.s.AddPath(apiutilAdd(p))
		}
		if err != nil {
			t.Fatalf("gobgp %v %s: %v", s.withdraw, s.nlri, err)
		}
	}
}

func (g *gobgpPeer) marker(t testing.TB) {
	t.Helper()
	nh, _ := bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.254"))
	nlri, _ := bgp.NewIPAddrPrefix(netip.MustParsePrefix(markerRoute))
	g.apply(t, []*pathSpec{{fam: bgp.RF_IPv4_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeLocalPref(100)}}})
}

// TestExaBGPIngestRealPeers: GoBGP announces and withdraws 1,110 routes with
// every attribute kind to Debian's exaBGP, which runs the real bgpedge binary;
// every event must be durable in the spool with correct normalised fields,
// and the session events (state, open, notification, shutdown) too.
func TestExaBGPIngestRealPeers(t *testing.T) {
	bin := bgpedgeBinary(t)
	gAddr, eAddr := labAddrs()
	g := startGoBGP(t, gAddr, eAddr)
	dir := t.TempDir()
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1"))
	yaml := labConfig(t, dir, metrics, "")
	e := startExaBGP(t, dir, exabgpConf(bin, yaml, g))
	testenv.Eventually(t, 30*time.Second, "exaBGP session with GoBGP established", g.established)

	start := time.Now()
	// Announce, and let exaBGP see every announcement before withdrawing:
	// GoBGP drops an announcement still queued when its withdraw comes.
	g.apply(t, labRoutes(t, false))
	g.marker(t)
	waitSpooled(t, g, metrics, labV4Routes) // GoBGP packs v6 and flow NLRI that share attributes
	g.apply(t, labRoutes(t, true))
	waitSpooled(t, g, metrics, labV4Routes+1)
	elapsed := time.Since(start)
	spooled := metric(metrics, "bgpedge_exabgp_spooled_records_total")
	t.Logf("%.0f records spooled in %v (%.0f/s, exaBGP-bound)", spooled, elapsed, spooled/elapsed.Seconds())

	// GoBGP sends a Cease: exaBGP reports the notification and the session going down.
	before := metric(metrics, `bgpedge_exabgp_lines_total{kind="event"}`)
	if err := g.shutdownPeer(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "notification and state down spooled", func() bool {
		return metric(metrics, "bgpedge_exabgp_spooled_records_total") >= before+2
	})
	e.stop()

	recs := readSpool(t, filepath.Join(dir, "exabgp", "spool"))
	_, peers, errs, byPrefix, types := decodeAll(t, recs)
	t.Logf("%d records, event types %v", len(recs), types)
	for _, p := range peers {
		if !strings.Contains(p, `"keepalive"`) {
			t.Logf("peer event: %s", p[max(0, len(p)-250):])
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d decode errors, first: %s", len(errs), errs[0])
	}
	for _, typ := range []string{"state", "open", "notification", TypeShutdown} {
		if types[typ] == 0 {
			t.Errorf("no %s event spooled", typ)
		}
	}
	for i := range labV4Routes {
		p := v4Prefix(i).String()
		evs := byPrefix[p]
		// The route refresh bgpedge asks for on start can make GoBGP send a route twice.
		if !announcedThenWithdrawn(evs) {
			t.Fatalf("%s: want announce(s) then withdraw, got %d events: %s", p, len(evs), mustJSON(evs))
		}
		r := evs[0].Route
		want := record.Route{Action: "announce", Prefix: p, AFI: 1, SAFI: 1, Family: "ipv4-unicast", NextHop: "192.0.2.254", Origin: "igp",
			ASPath: []uint32{65010, uint32(70000 + i)}, MED: u32(uint32(i)), LocalPref: u32(200),
			Communities: []string{fmt.Sprintf("65001:%d", i), "65535:65281"}, LargeCommunities: []string{fmt.Sprintf("65001:1:%d", i)},
			ExtCommunities: []string{fmt.Sprintf("target:65001:%d", i)}, RIB: "adj-rib-in"}
		r.ExaBGP = nil
		if gb, wb := mustJSON(r), mustJSON(want); gb != wb {
			t.Fatalf("%s:\n got %s\nwant %s", p, gb, wb)
		}
		if pe := evs[0].Peer; pe == nil || pe.Address != gAddr || pe.AS != 65001 || evs[0].Router != eAddr || evs[0].Source != "exabgp" {
			t.Fatalf("%s: peer %+v router %s", p, pe, evs[0].Router)
		}
	}
	for i := range labV6Routes {
		p := v6Prefix(i).String()
		evs := byPrefix[p]
		if !announcedThenWithdrawn(evs) || evs[0].Route.Family != "ipv6-unicast" || evs[0].Route.NextHop != "2001:db8::254" || evs[0].Route.Origin != "incomplete" {
			t.Fatalf("%s: %d events %s", p, len(evs), mustJSON(evs))
		}
	}
	flows := 0
	for p, evs := range byPrefix {
		if strings.HasPrefix(p, "flow destination-ipv4 203.0.113.") {
			flows++
			if !announcedThenWithdrawn(evs) || evs[0].Route.Family != "ipv4-flowspec" || !slices.Contains(evs[0].Route.ExtCommunities, "rate-limit:0") {
				t.Fatalf("%s: %s", p, mustJSON(evs))
			}
		}
	}
	if flows != labFlows {
		t.Fatalf("%d flow rules spooled, want %d", flows, labFlows)
	}
	// The spool's sequence numbers are gap-free: nothing was dropped.
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("gap in spool: %d then %d", recs[i-1].Seq, recs[i].Seq)
		}
	}
}

// waitSpooled waits until GoBGP has sent the marker route and the events
// exaBGP handed over have stopped growing and are all durable. exaBGP gives
// no signal of its own for "everything received so far was written".
func waitSpooled(t testing.TB, g *gobgpPeer, metrics string, atLeast int) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "marker route sent by GoBGP", func() bool {
		return g.adjOutHas(t, markerRoute)
	})
	last, since := -1.0, time.Now()
	testenv.Eventually(t, 90*time.Second, "all events spooled", func() bool {
		n := metric(metrics, `bgpedge_exabgp_lines_total{kind="event"}`)
		if n != last {
			last, since = n, time.Now()
			return false
		}
		return n >= float64(atLeast) && time.Since(since) > 3*time.Second &&
			metric(metrics, "bgpedge_exabgp_queue_lines") == 0 && metric(metrics, "bgpedge_exabgp_spooled_records_total") >= n
	})
}

func announcedThenWithdrawn(evs []record.Event) bool {
	if len(evs) < 2 || evs[len(evs)-1].Route.Action != "withdraw" {
		return false
	}
	for _, e := range evs[:len(evs)-1] {
		if e.Route.Action != "announce" {
			return false
		}
	}
	return true
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestExaBGPApiOptions: exaBGP's output options that change the JSON every
// process of a neighbor receives — api.compact, negotiated, packets with
// consolidate — still decode into the same route events.
func TestExaBGPApiOptions(t *testing.T) {
	bin := bgpedgeBinary(t)
	gAddr, eAddr := labAddrs()
	g := startGoBGP(t, gAddr, eAddr)
	dir := t.TempDir()
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1"))
	yaml := labConfig(t, dir, metrics, "")
	api := `api {
        processes [ bgpedge ];
        neighbor-changes;
        negotiated;
        receive {
            parsed;
            packets;
            consolidate;
            update;
            open;
        }
        send {
            packets;
            update;
        }
    }`
	e := startExaBGP(t, dir, exabgpConfAPI(bin, yaml, g, api), "exabgp.api.compact=true")
	testenv.Eventually(t, 30*time.Second, "exaBGP session with GoBGP established", g.established)
	const routes = 50
	nh, _ := bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.254"))
	var specs []*pathSpec
	for i := range routes {
		nlri, _ := bgp.NewIPAddrPrefix(v4Prefix(i))
		specs = append(specs, &pathSpec{fam: bgp.RF_IPv4_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeMultiExitDisc(uint32(i)), bgp.NewPathAttributeLocalPref(100)}})
	}
	g.apply(t, specs)
	g.marker(t)
	waitSpooled(t, g, metrics, routes)
	e.stop()
	recs := readSpool(t, filepath.Join(dir, "exabgp", "spool"))
	_, _, errs, byPrefix, types := decodeAll(t, recs)
	if len(errs) > 0 {
		t.Fatalf("decode errors: %s", errs[0])
	}
	compact, hex := false, false
	for _, r := range recs {
		compact = compact || strings.Contains(string(r.Payload), `"192.0.2.254": [ "100.64.`)
		hex = hex || strings.Contains(string(r.Payload), `"body": "0x`)
	}
	if !compact || !hex {
		t.Fatalf("exaBGP did not use the options (compact %v, hex %v): %s", compact, hex, recs[len(recs)/2].Payload)
	}
	for i := range routes {
		p := v4Prefix(i).String()
		evs := byPrefix[p]
		if len(evs) == 0 || evs[0].Route.Action != "announce" || evs[0].Route.NextHop != "192.0.2.254" || evs[0].Route.MED == nil || *evs[0].Route.MED != uint32(i) {
			t.Fatalf("%s: %s", p, mustJSON(evs))
		}
	}
	t.Logf("%d records: %v", len(recs), types)
}
