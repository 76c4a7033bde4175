package exabgp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
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
		// An IPv4-address route target: its uint64 value is above 2^53, so a
		// float64 anywhere on the way would change its last digits.
		rtIP, _ := bgp.ParseExtendedCommunity(bgp.EC_SUBTYPE_ROUTE_TARGET, fmt.Sprintf("192.0.2.1:%d", i))
		out = append(out, &pathSpec{fam: bgp.RF_IPv4_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(0),
			bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, []uint32{65010, uint32(70000 + i)})}),
			nh4,
			bgp.NewPathAttributeMultiExitDisc(uint32(i)),
			bgp.NewPathAttributeLocalPref(200),
			bgp.NewPathAttributeCommunities([]uint32{65001<<16 | uint32(i), uint32(bgp.COMMUNITY_NO_EXPORT)}),
			bgp.NewPathAttributeLargeCommunities([]*bgp.LargeCommunity{bgp.NewLargeCommunity(65001, 1, uint32(i))}),
			bgp.NewPathAttributeExtendedCommunities([]bgp.ExtendedCommunityInterface{rt, rtIP}),
		}})
	}
	for i := range labV6Routes {
		nlri, _ := bgp.NewIPAddrPrefix(v6Prefix(i))
		mp, _ := bgp.NewPathAttributeMpReachNLRI(bgp.RF_IPv6_UC, []bgp.PathNLRI{{NLRI: nlri}}, netip.MustParseAddr("2001:db8::254"))
		out = append(out, &pathSpec{fam: bgp.RF_IPv6_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(2), mp, bgp.NewPathAttributeMultiExitDisc(uint32(i)), bgp.NewPathAttributeLocalPref(100),
			bgp.NewPathAttributeCommunities([]uint32{65002<<16 | uint32(i)}),
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

// TestExaBGPIngestRealPeers is the whole ingest path with real peers: GoBGP
// announces and then withdraws 1,110 routes with every attribute kind (IPv4
// with origin, AS path, MED, local-pref, communities, large and extended
// communities; IPv6; flowspec) to exaBGP (Debian's 4.2, and 5.0), which runs the real
// bgpedge binary with its own forwarder to the real Kafka broker. Every spool
// record must reach Kafka (raw, and normalised with the expected fields per
// prefix), and so must the session events: state up and down, and GoBGP's
// Cease notification. What is still in the spool when exaBGP stops (its own
// shutdown) must be there, unacknowledged.
func TestExaBGPIngestRealPeers(t *testing.T) { forEachExaBGP(t, testIngestRealPeers) }

func testIngestRealPeers(t *testing.T, x labExaBGP) {
	brokers := testenv.KafkaBrokers(t)
	bin := bgpedgeBinary(t)
	natsURL := startNATS(t)
	gAddr, eAddr := labAddrs()
	g := startGoBGP(t, gAddr, eAddr)
	dir := t.TempDir()
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePorts(t, "127.0.0.1", 1)[0])
	yaml := labConfig(t, dir, metrics, "")
	prefix := enableKafkaForwarder(t, yaml, brokers, natsURL)
	// The default api block plus FSM transitions and the signals exaBGP gets.
	api := strings.Replace(defaultAPI, "neighbor-changes;", "neighbor-changes;\n        fsm;\n        signal;", 1)
	e := startExaBGP(t, x, dir, exabgpConfAPI(bin, yaml, g, api))
	testenv.Eventually(t, 30*time.Second, "exaBGP session with GoBGP established", g.established)
	kb := followKafka(t, brokers, prefix)

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
	if err := g.shutdownPeer(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "state down on Kafka", func() bool {
		return kb.has(func(ev kafkaEvent) bool { return ev.Type == "state" && ev.Data.State == "down" })
	})
	// Everything spooled so far is on Kafka: one raw message per spool seq,
	// 1..n without gaps, and the normalised events of each.
	testenv.Eventually(t, 60*time.Second, "Kafka holds every spooled record", func() bool {
		n := metric(metrics, "bgpedge_exabgp_spooled_records_total")
		return n > 0 && kb.caughtUp(uint64(n))
	})
	t.Logf("Kafka caught up with the spool %v after the first announcement", time.Since(start))
	e.stop()

	// The process has exited: whatever its forwarder did not deliver before
	// it stopped (exaBGP's shutdown lines) is still in the spool.
	st, left := spoolState(t, dir)
	leftSeqs := map[uint64]bool{}
	for _, r := range left {
		leftSeqs[r.Seq] = true
	}
	testenv.Eventually(t, 30*time.Second, "every spool seq on Kafka or still in the spool", func() bool {
		kb.mu.Lock()
		defer kb.mu.Unlock()
		for s := uint64(1); s <= st.LastSeq; s++ {
			if kb.raw[s] == 0 && !leftSeqs[s] {
				return false
			}
		}
		return true
	})
	_, leftPeers, leftErrs, _, leftTypes := decodeAll(t, left)

	kb.mu.Lock()
	defer kb.mu.Unlock()
	t.Logf("spool: last seq %d, acknowledged through %d, %d records left (%v); Kafka: %d raw, %d route prefixes, %d peer events, %d duplicates",
		st.LastSeq, st.AckedThrough, len(left), leftTypes, len(kb.raw), len(kb.routes), len(kb.peers), kb.dups)
	if len(kb.bad) > 0 || len(kb.errs) > 0 || len(leftErrs) > 0 {
		t.Fatalf("bad messages %d (first %q), decode errors on Kafka %d (first %q), in the spool %d", len(kb.bad), first(kb.bad), len(kb.errs), first(kb.errs), len(leftErrs))
	}
	// The raw stream is the spool, line for line: the same count, nothing beyond it.
	for s := range kb.raw {
		if s > st.LastSeq {
			t.Fatalf("raw message for seq %d, the spool's last is %d", s, st.LastSeq)
		}
		if line := kb.rawLines[s]; len(line) == 0 || line[0] != '{' {
			t.Fatalf("raw seq %d is not exaBGP's JSON line: %q", s, line)
		}
	}
	for s := uint64(1); s <= st.AckedThrough; s++ {
		if kb.raw[s] == 0 {
			t.Fatalf("seq %d acknowledged but not on Kafka's raw topic", s)
		}
	}

	wantPeer := func(what string, ev kafkaEvent) {
		t.Helper()
		if ev.Peer == nil || ev.Peer.Address != gAddr || ev.Peer.AS != 65001 || ev.Peer.Type != "exabgp" || ev.Router != eAddr ||
			ev.Source != "exabgp" || ev.Agent != "edge-test" || ev.V != record.EventSchemaVersion || ev.Timestamp == nil ||
			!strings.HasPrefix(ev.ID, fmt.Sprintf("edge-test:%d:", ev.Seq)) || kb.raw[ev.Seq] == 0 || kb.rawKeys[ev.Seq] != gAddr {
			t.Fatalf("%s: envelope %s (key %q, raw key %q)", what, mustJSON(ev.Event), ev.Key, kb.rawKeys[ev.Seq])
		}
	}
	// checkRoute compares one route event on Kafka with what GoBGP sent;
	// fields exaBGP keeps in route.exabgp are checked by the caller.
	checkRoute := func(p string, ev kafkaEvent, want record.Route) map[string]json.RawMessage {
		t.Helper()
		wantPeer(p, ev)
		if ev.Type != TypeRoute || ev.Key != gAddr+"|"+want.Family+"|"+p {
			t.Fatalf("%s: type %q key %q", p, ev.Type, ev.Key)
		}
		got := *ev.Route
		extra := got.ExaBGP
		got.ExaBGP = nil
		if gb, wb := mustJSON(got), mustJSON(want); gb != wb {
			t.Fatalf("%s on Kafka:\n got %s\nwant %s", p, gb, wb)
		}
		return extra
	}
	withdrawn := func(p string, afi uint16, safi uint8, fam string) record.Route {
		return record.Route{Action: "withdraw", Prefix: p, AFI: afi, SAFI: safi, Family: fam, RIB: "adj-rib-in"}
	}

	expected := map[string]bool{markerRoute: true}
	announces, withdraws := 0, 0
	for i := range labV4Routes {
		p := v4Prefix(i).String()
		expected[p] = true
		evs := kb.routes[p]
		// The route refresh bgpedge asks for on start can make GoBGP send a route twice.
		if !kafkaAnnouncedThenWithdrawn(evs) {
			t.Fatalf("%s: want announce(s) then one withdraw on Kafka, got %d events: %s", p, len(evs), mustJSON(evs))
		}
		want := record.Route{Action: "announce", Prefix: p, AFI: 1, SAFI: 1, Family: "ipv4-unicast", NextHop: "192.0.2.254", Origin: "igp",
			ASPath: []uint32{65010, uint32(70000 + i)}, MED: u32(uint32(i)), LocalPref: u32(200),
			Communities: []string{fmt.Sprintf("65001:%d", i), "65535:65281"}, LargeCommunities: []string{fmt.Sprintf("65001:1:%d", i)},
			ExtCommunities: []string{fmt.Sprintf("target:65001:%d", i), fmt.Sprintf("target:192.0.2.1:%d", i)}, RIB: "adj-rib-in"}
		for _, ev := range evs[:len(evs)-1] {
			extra := checkRoute(p, ev, want)
			checkExtValues(t, p, extra, map[string]uint64{
				want.ExtCommunities[0]: 0x0002<<48 | 65001<<16<<16 | uint64(i),
				want.ExtCommunities[1]: 0x0102<<48 | 0xc0000201<<16 | uint64(i),
			})
			announces++
		}
		checkRoute(p, evs[len(evs)-1], withdrawn(p, 1, 1, "ipv4-unicast"))
		withdraws++
	}
	for i := range labV6Routes {
		p := v6Prefix(i).String()
		expected[p] = true
		evs := kb.routes[p]
		if !kafkaAnnouncedThenWithdrawn(evs) {
			t.Fatalf("%s: want announce(s) then one withdraw on Kafka, got %d events: %s", p, len(evs), mustJSON(evs))
		}
		want := record.Route{Action: "announce", Prefix: p, AFI: 2, SAFI: 1, Family: "ipv6-unicast", NextHop: "2001:db8::254", Origin: "incomplete",
			MED: u32(uint32(i)), LocalPref: u32(100), Communities: []string{fmt.Sprintf("65002:%d", i)}, RIB: "adj-rib-in"}
		for _, ev := range evs[:len(evs)-1] {
			checkRoute(p, ev, want)
			announces++
		}
		checkRoute(p, evs[len(evs)-1], withdrawn(p, 2, 1, "ipv6-unicast"))
		withdraws++
	}
	for i := range labFlows {
		// exaBGP's readable rule is the flow's prefix; its match components
		// are in route.exabgp.nlri.
		dst := fmt.Sprintf("203.0.113.%d/32", i)
		p := "flow destination-ipv4 " + dst + " protocol =tcp destination-port =80"
		expected[p] = true
		evs := kb.routes[p]
		if !kafkaAnnouncedThenWithdrawn(evs) {
			t.Fatalf("%s: want announce(s) then one withdraw on Kafka, got %d events: %s", p, len(evs), mustJSON(evs))
		}
		want := record.Route{Action: "announce", Prefix: p, AFI: 1, SAFI: 133, Family: "ipv4-flowspec", Origin: "igp",
			LocalPref: u32(100), ExtCommunities: []string{"rate-limit:0"}, RIB: "adj-rib-in"}
		wantNLRI := map[string]any{"destination-ipv4": []any{dst}, "protocol": []any{"=tcp"}, "destination-port": []any{"=80"}, "string": p}
		for j, ev := range evs {
			if j == len(evs)-1 {
				want = withdrawn(p, 1, 133, "ipv4-flowspec")
				withdraws++
			} else {
				announces++
			}
			extra := checkRoute(p, ev, want)
			var nlri map[string]any
			if err := json.Unmarshal(extra["nlri"], &nlri); err != nil || mustJSON(nlri) != mustJSON(wantNLRI) {
				t.Fatalf("%s %s: route.exabgp.nlri %s, want %s", p, ev.Route.Action, extra["nlri"], mustJSON(wantNLRI))
			}
			if j < len(evs)-1 {
				checkExtValues(t, p, extra, map[string]uint64{"rate-limit:0": 0x8006 << 48})
			}
		}
	}
	for p := range kb.routes {
		if !expected[p] {
			t.Errorf("unexpected route on Kafka: %s", mustJSON(kb.routes[p]))
		}
	}
	if want := labV4Routes + labV6Routes + labFlows; withdraws != want || announces < want {
		t.Fatalf("%d announcements and %d withdrawals on Kafka, want ≥ %d and %d", announces, withdraws, want, want)
	}
	t.Logf("on Kafka: %d announcements, %d withdrawals, %d End-of-RIB markers", announces, withdraws, len(kb.eors))

	// Session events, on exabgp.peer in order (one key, so one partition):
	// up, then GoBGP's Cease (administrative reset), then down naming it.
	up, notification, down, established := -1, -1, -1, -1
	types := map[string]int{}
	sigterm := false
	for _, p := range leftPeers {
		sigterm = sigterm || strings.Contains(p, `"type":"signal"`) && strings.Contains(p, `"code":"15","name":"SIGTERM"`)
	}
	for i, ev := range kb.peers {
		types[ev.Type]++
		if ev.Peer == nil { // exaBGP's own shutdown, delivered before the forwarder stopped
			continue
		}
		wantPeer(ev.Type, ev)
		if ev.Key != gAddr {
			t.Fatalf("%s event keyed %q, want %q", ev.Type, ev.Key, gAddr)
		}
		switch {
		case ev.Type == "state" && ev.Data.State == "up" && up < 0:
			up = i
		case ev.Type == "notification" && up >= 0 && notification < 0:
			var n struct {
				Code, Subcode int
				Data          string
			}
			if err := json.Unmarshal(ev.Data.Notification, &n); err != nil || n.Code != 6 || n.Subcode != 4 || ev.Data.Direction != "receive" {
				t.Fatalf("notification: %s", mustJSON(ev.Data))
			}
			notification = i
		case ev.Type == "state" && ev.Data.State == "down" && notification >= 0 && down < 0:
			// exaBGP 4.2 names the Cease; 5.0 gives its codes.
			if want := map[string]string{"4.2": "Cease / Administrative Reset", "5.0": "notification received (6,4)"}[x.version]; !strings.Contains(ev.Data.Reason, want) {
				t.Fatalf("state down: reason %q", ev.Data.Reason)
			}
			down = i
		case ev.Type == "open" && ev.Data.Direction == "receive" && ev.Peer.BGPID != gAddr:
			t.Fatalf("open from GoBGP: bgp_id %q, want %q", ev.Peer.BGPID, gAddr)
		case ev.Type == "fsm" && ev.Data.State == "ESTABLISHED" && established < 0:
			established = i
		case ev.Type == "signal":
			sigterm = sigterm || ev.Data.Name == "SIGTERM" && string(ev.Data.Code) == `"15"`
		}
	}
	t.Logf("peer events on Kafka: %v", types)
	if up < 0 || notification < 0 || down < 0 || types["open"] == 0 || established < 0 || established > notification {
		t.Fatalf("want fsm ESTABLISHED and state up, then notification (Cease), then state down, and an open on Kafka; got fsm %d up %d notification %d down %d, %v",
			established, up, notification, down, types)
	}
	// exaBGP's shutdown, and the SIGTERM that causes it, come as it stops,
	// together with the process's EOF: delivered if the forwarder was quick,
	// else kept in the spool.
	if leftTypes[TypeShutdown] == 0 && types[TypeShutdown] == 0 {
		t.Errorf("exaBGP's shutdown notification neither on Kafka nor left in the spool")
	}
	if !sigterm {
		t.Errorf("no SIGTERM signal event on Kafka or left in the spool")
	}
}

// kafkaAnnouncedThenWithdrawn: one or more announcements, then exactly one withdrawal.
func kafkaAnnouncedThenWithdrawn(evs []kafkaEvent) bool {
	rs := make([]record.Event, len(evs))
	for i := range evs {
		rs[i] = evs[i].Event
	}
	return announcedThenWithdrawn(rs)
}

// checkExtValues checks the uint64 values exaBGP gave the extended
// communities, kept digit for digit in route.exabgp.
func checkExtValues(t testing.TB, p string, extra map[string]json.RawMessage, want map[string]uint64) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(extra["extended-community"]))
	d.UseNumber()
	var ecs []struct {
		Value  json.Number `json:"value"`
		String string      `json:"string"`
	}
	if err := d.Decode(&ecs); err != nil || len(ecs) != len(want) {
		t.Fatalf("%s: route.exabgp.extended-community %s: %v", p, extra["extended-community"], err)
	}
	for _, ec := range ecs {
		if w, ok := want[ec.String]; !ok || ec.Value.String() != strconv.FormatUint(w, 10) {
			t.Fatalf("%s: extended community %s = %s, want %d", p, ec.String, ec.Value, w)
		}
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
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
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePorts(t, "127.0.0.1", 1)[0])
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
	e := startExaBGP(t, debianExaBGP(t), dir, exabgpConfAPI(bin, yaml, g, api), "exabgp.api.compact=true")
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
