//go:build !race

// GoBGP v4.8.0 has a data race of its own between its BMP client and its FSM
// handler (see bmp/listener_live_gobgp_test.go), so this in-process sender
// only runs in non-race test runs.

package rib_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/rib"
)

// peerLive configures a session between a (active) and b (passive) for
// IPv4 unicast, b sending Add-Path to a if addPath.
func peerLive(t *testing.T, a, b *liveRouter, addPath bool) {
	t.Helper()
	families := func(recv bool, sendMax uint32) []*api.AfiSafi {
		as := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}}
		if addPath {
			as.AddPaths = &api.AddPaths{Config: &api.AddPathsConfig{Receive: recv, SendMax: sendMax}}
		}
		return []*api.AfiSafi{as}
	}
	add := func(self, other *liveRouter, passive bool, afs []*api.AfiSafi) {
		if err := self.srv.AddPeer(context.Background(), &api.AddPeerRequest{Peer: &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: other.addr, PeerAsn: liveAS},
			Transport: &api.Transport{LocalAddress: self.addr, RemotePort: uint32(other.port), PassiveMode: passive},
			Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, IdleHoldTimeAfterReset: 1, HoldTime: 30, KeepaliveInterval: 10}},
			AfiSafis:  afs,
		}}); err != nil {
			t.Fatal(err)
		}
	}
	add(b, a, true, families(false, 4))
	add(a, b, false, families(true, 0))
}

// waitAcceptedLive waits until s has accepted n routes from neighbor.
func waitAcceptedLive(t *testing.T, s *server.BgpServer, neighbor string, n int) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d routes from %s", n, neighbor), func() bool {
		total := 0
		_ = s.ListPeer(context.Background(), &api.ListPeerRequest{Address: neighbor}, func(p *api.Peer) {
			for _, af := range p.GetAfiSafis() {
				total += int(af.GetState().GetAccepted())
			}
		})
		return total == n
	})
}

// waitAdjInLive waits until s's Adj-RIB-In from neighbor holds exactly the
// routes livePath(i, 1, med(i)) for which med(i) is not 0. Its count of
// accepted routes is not enough: it reaches the count while updates that
// change routes are still on their way, and a BMP session that starts
// then sends the old paths in its initial dump and the new ones as they
// arrive. GoBGP encodes the two differently for an Add-Path peer (the
// initial dump without path ids, the updates it relays with them), so the
// route state rightly holds both paths.
func waitAdjInLive(t *testing.T, s *server.BgpServer, neighbor string, routes int, med func(i int) uint32) {
	t.Helper()
	ok, last := testenv.Poll(time.Minute, func() (bool, string) {
		held, wrong := 0, 0
		err := s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_ADJ_IN, Name: neighbor, Family: bgp.RF_IPv4_UC},
			func(prefix bgp.NLRI, paths []*apiutil.Path) {
				_, i := liveIndex(t, prefix.String())
				for _, p := range paths {
					held++
					got := uint32(0)
					for _, a := range p.Attrs {
						if m, ok := a.(*bgp.PathAttributeMultiExitDisc); ok {
							got = m.Value
						}
					}
					if want := med(i); want == 0 || got != want {
						wrong++
					}
				}
			})
		return err == nil && wrong == 0 && held == routes, fmt.Sprintf("%d paths (want %d), %d of them unexpected (err %v)", held, routes, wrong, err)
	})
	if !ok {
		t.Fatalf("Adj-RIB-In from %s after a minute: %s", neighbor, last)
	}
}

// ribCounts asks the agent's GET /rib for the routes held per peer, in the
// pre-policy table.
func ribCounts(t *testing.T, httpAddr string) map[string]uint64 {
	t.Helper()
	return ribTableCounts(t, httpAddr, rib.TableAdjInPre)
}

// TestRIBLiveGoBGP: an in-process GoBGP v4 router A reports over BMP, to
// `bgpedge run` with the route state on, the routes it learns from B
// (6,000, with Add-Path) and C (5,000). C's session flaps: none of C's
// routes stay in the compacted bmp.rib. Then A's BMP session is cut; while
// it is down B withdraws 500 routes and changes 500; A reconnects and
// re-sends its table: the route stream gets no event for B's unchanged
// routes, one for each changed route, and a (synthetic) withdraw for each
// route gone; bmp.rib ends as B's table.
func TestRIBLiveGoBGP(t *testing.T) {
	// GoBGP retries its BMP session every few seconds: the routes must
	// stay stale longer than that.
	ag := startRIBAgent(t, "40s", `
  kafka:`)
	ag.run.Start()
	ctx := context.Background()
	a := startLiveRouter(t, "10.0.0.1", "127.0.0.1")
	b := startLiveRouter(t, "10.0.0.2", "127.0.0.2")
	c := startLiveRouter(t, "10.0.0.3", "127.0.0.3")
	peerLive(t, a, b, true)
	peerLive(t, a, c, false)

	const bRoutes, cRoutes, gone, changed = 6000, 5000, 500, 500
	var bPaths, cPaths []*apiutil.Path
	for i := range bRoutes {
		bPaths = append(bPaths, livePath(t, i, 1, 100))
	}
	for i := range cRoutes {
		cPaths = append(cPaths, livePath(t, i, 2, 300))
	}
	bResp, err := b.srv.AddPath(apiutil.AddPathRequest{Paths: bPaths})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.srv.AddPath(apiutil.AddPathRequest{Paths: cPaths}); err != nil {
		t.Fatal(err)
	}
	waitAcceptedLive(t, a.srv, "127.0.0.2", bRoutes)
	waitAcceptedLive(t, a.srv, "127.0.0.3", cRoutes)

	// A reaches the agent through a gate, which cuts the BMP session the
	// way a network failure does (no Peer Down, no Termination).
	gate := testenv.NewGate(t, testenv.LoopbackAddr(t), ag.bmpAddr)
	host, portText, _ := net.SplitHostPort(gate.Addr())
	port, _ := strconv.Atoi(portText)
	bmpReq := &api.AddBmpRequest{Address: host, Port: uint32(port), Policy: api.AddBmpRequest_MONITORING_POLICY_PRE, SysName: "gobgp-a"}
	if err := a.srv.AddBmp(ctx, bmpReq); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 2*time.Minute, "both peers' routes in the route state", func() bool {
		n := ribCounts(t, ag.run.HTTP)
		return n["127.0.0.2"] == bRoutes && n["127.0.0.3"] == cRoutes
	})

	// C flaps: A reports a Peer Down, the route state withdraws C's routes.
	if err := c.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "C's routes withdrawn", func() bool {
		n := ribCounts(t, ag.run.HTTP)
		return n != nil && n["127.0.0.3"] == 0
	})
	testenv.Eventually(t, time.Minute, "spool drained", func() bool { return ag.run.Metrics()["bgpedge_buffer_records"] == 0 })
	cut := uint64(ag.run.Metrics()["bgpedge_forwarder_acked_seq"])

	// The BMP session is cut; B changes its table meanwhile.
	gate.Close()
	testenv.Eventually(t, time.Minute, "BMP session closed", func() bool { return ag.run.Metrics()["bgpedge_bmp_sessions_active"] == 0 })
	del := apiutil.DeletePathRequest{}
	for _, r := range bResp[:gone] {
		del.UUIDs = append(del.UUIDs, r.UUID)
	}
	if err := b.srv.DeletePath(del); err != nil {
		t.Fatal(err)
	}
	var changes []*apiutil.Path
	for i := gone; i < gone+changed; i++ {
		changes = append(changes, livePath(t, i, 1, 101))
	}
	if _, err := b.srv.AddPath(apiutil.AddPathRequest{Paths: changes}); err != nil {
		t.Fatal(err)
	}
	waitAdjInLive(t, a.srv, "127.0.0.2", bRoutes-gone, func(i int) uint32 {
		switch {
		case i < gone:
			return 0
		case i < gone+changed:
			return 101
		}
		return 100
	})
	gate.Open() // A reconnects on its own and sends its table again
	var m map[string]float64
	if ok, last := testenv.Poll(2*time.Minute, func() (bool, string) {
		m = ag.run.Metrics()
		held := ribCounts(t, ag.run.HTTP)["127.0.0.2"]
		return m["bgpedge_bmp_sessions_active"] == 1 && m["bgpedge_rib_stale_routes"] == 0 && m["bgpedge_buffer_records"] == 0 && held == bRoutes-gone,
			fmt.Sprintf("sessions %v, stale %v, unacknowledged %v, B's routes held %d (want %d)", m["bgpedge_bmp_sessions_active"],
				m["bgpedge_rib_stale_routes"], m["bgpedge_buffer_records"], held, bRoutes-gone)
	}); !ok {
		// Not fatal: what reached the route stream tells why.
		t.Errorf("B's table not re-sent, or routes still stale, after 2 minutes: %s\n%s\n%s", last, ribMetrics(m), ag.run.Log())
	}

	// The route stream after the cut: only the changes and the withdraws.
	announced, withdrawn := map[string]uint32{}, map[string]bool{}
	unexpected := 0
	routeEventsAfter(t, ag, "bmp.route.pre-policy", cut, func(ev liveRouteEvent, raw []byte) {
		if ev.Peer.Address != "127.0.0.2" {
			return
		}
		switch {
		case ev.Route.Action == "withdraw":
			withdrawn[ev.Route.Prefix] = true
		case ev.Route.MED != nil && *ev.Route.MED == 101:
			announced[ev.Route.Prefix] = 101
		default:
			unexpected++
			if unexpected < 5 {
				t.Errorf("after the reconnect: an event for an unchanged route: %s", raw)
			}
		}
	})
	for i := range gone + changed {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32).String()
		if i < gone && !withdrawn[p] {
			t.Errorf("route %s, gone while the BMP session was down, was not withdrawn", p)
		}
		if i >= gone && announced[p] != 101 {
			t.Errorf("route %s, changed while the BMP session was down, was not announced", p)
		}
	}
	if len(withdrawn) != gone || len(announced) != changed || unexpected != 0 {
		t.Errorf("after the reconnect: %d withdraws (want %d), %d changed announcements (want %d), %d other events (want 0)",
			len(withdrawn), gone, len(announced), changed, unexpected)
	}

	// The compacted view: B's table, nothing of C.
	byPeer := map[string]int{}
	for k, r := range ribView(t, ag) {
		byPeer[r.peer]++
		if r.peer == "127.0.0.2" {
			_, i := liveIndex(t, r.prefix)
			want := uint32(100)
			if i >= gone && i < gone+changed {
				want = 101
			}
			if i < gone || r.med != want {
				t.Errorf("bmp.rib %s: MED %d, want %d (route gone: %v)", k, r.med, want, i < gone)
			}
		}
	}
	if byPeer["127.0.0.3"] != 0 || byPeer["127.0.0.2"] != bRoutes-gone {
		t.Errorf("compacted bmp.rib per peer %v: want %d of B and none of C", byPeer, bRoutes-gone)
	}
	t.Logf("after the reconnect: %d withdraws, %d changed announcements; bmp.rib per peer %v", len(withdrawn), len(announced), byPeer)
}
