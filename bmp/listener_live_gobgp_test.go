//go:build !race

// GoBGP v4.8.0 has a data race of its own between its BMP client and its FSM
// handler (both serialise the same OPEN capabilities), so this in-process
// sender only runs in non-race test runs; the station's side is covered
// under -race by the external senders and the replay tests.

package bmp

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
)

// TestLiveGoBGP has an in-process GoBGP v4 router A send BMP (pre-policy,
// post-policy and Loc-RIB monitoring) to the station while it learns and
// loses IPv4 and IPv6 routes over iBGP from B (with Add-Path) and C, and
// then C goes down. A tap between A and the station
// records every byte A sent: the spool must hold exactly those messages, in
// order, and every one must decode without error.
func TestLiveGoBGP(t *testing.T) {
	sp := openRealSpool(t)
	st := startListener(t, sp, nil)
	tap := startTap(t, st.addr)
	ctx := context.Background()

	a := startGoBGP(t, "10.0.0.1", "127.0.0.1")
	b := startGoBGP(t, "10.0.0.2", "127.0.0.2")
	c := startGoBGP(t, "10.0.0.3", "127.0.0.3")
	peerGoBGP(t, a, b, true)
	peerGoBGP(t, a, c, false)
	waitEstablished(t, a.srv, 2)

	tapHost, tapPort, _ := net.SplitHostPort(tap.addr)
	port, _ := strconv.Atoi(tapPort)
	if err := a.srv.AddBmp(ctx, &api.AddBmpRequest{
		Address: tapHost, Port: uint32(port), Policy: api.AddBmpRequest_MONITORING_POLICY_ALL,
		SysName: "bgpedge-test-a", SysDescr: "in-process GoBGP v4",
	}); err != nil {
		t.Fatal(err)
	}

	// GoBGP registers its BMP watchers only once connected: wait for the
	// session (Initiation, both peers' and the Loc-RIB Peer Up) before routes flow.
	testenv.Eventually(t, 30*time.Second, "BMP session up", func() bool {
		return countTypes(readAllRecords(t, sp))[int(MsgPeerUp)] >= 3
	})

	// B announces 10,000 routes (IPv4 and IPv6, Add-Path) and withdraws
	// 1,000 of them. C's routes are a second peer's.
	const rounds, perRound, v6PerRound, withdrawn, cRoutes = 1, 10000, 4000, 1000, 200
	var cPaths []*apiutil.Path
	for i := range cRoutes {
		cPaths = append(cPaths, gobgpPath(t, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32), "192.0.2.253", 300))
	}
	if _, err := c.srv.AddPath(apiutil.AddPathRequest{Paths: cPaths}); err != nil {
		t.Fatal(err)
	}
	waitAccepted(t, a.srv, "127.0.0.3", cRoutes)
	for round := range rounds {
		var paths []*apiutil.Path
		for i := range perRound - v6PerRound {
			paths = append(paths, gobgpPath(t, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(round), byte(i >> 8), byte(i)}), 32), "192.0.2.254", 100))
		}
		for i := range v6PerRound {
			paths = append(paths, gobgpPath(t, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(round), byte(i >> 8), byte(i)}), 56), "2001:db8::254", 100))
		}
		resp, err := b.srv.AddPath(apiutil.AddPathRequest{Paths: paths})
		if err != nil {
			t.Fatal(err)
		}
		waitAccepted(t, a.srv, "127.0.0.2", perRound)
		waitQuiet(t, sp)
		del := apiutil.DeletePathRequest{}
		for _, r := range resp[:withdrawn] {
			del.UUIDs = append(del.UUIDs, r.UUID)
		}
		if err := b.srv.DeletePath(del); err != nil {
			t.Fatal(err)
		}
		waitAccepted(t, a.srv, "127.0.0.2", perRound-withdrawn)
		waitQuiet(t, sp)
	}

	// C goes down: A reports a Peer Down.
	if err := c.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "peer down", func() bool {
		return countTypes(readAllRecords(t, sp))[int(MsgPeerDown)] >= 1
	})
	waitQuiet(t, sp)

	// A's BMP client is removed: Termination, then the session ends.
	if err := a.srv.DeleteBmp(ctx, &api.DeleteBmpRequest{Address: tapHost, Port: uint32(port)}); err != nil {
		t.Fatal(err)
	}
	sent, source := tap.wait(t)
	checkSpoolMatches(t, sp, source, sent)

	got := walkTypes(t, sent)
	t.Logf("GoBGP sent %d bytes: %v (0 RM, 1 stats, 2 peer down, 3 peer up, 4 init, 5 term)", len(sent), got)
	if got[int(MsgInitiation)] != 1 || got[int(MsgTermination)] != 1 || got[int(MsgPeerDown)] < 1 {
		t.Errorf("unexpected message mix %v", got)
	}
	events := decodeAll(t, sp, source)
	var routes, addPath, v6, withdraws, locRIB, postPolicy int
	for _, ev := range events {
		if ev.Route == nil {
			continue
		}
		routes++
		if ev.Route.PathID != 0 {
			addPath++
		}
		if ev.Route.AFI == 2 {
			v6++
		}
		if ev.Route.Action == "withdraw" {
			withdraws++
		}
		if ev.Peer != nil && ev.Peer.Type == "loc-rib" {
			locRIB++
		}
		if ev.Peer != nil && ev.Peer.Flags&FlagL != 0 {
			postPolicy++
		}
	}
	t.Logf("decoded %d events: %d routes, %d with Add-Path ids, %d IPv6, %d withdrawals, %d Loc-RIB, %d post-policy",
		len(events), routes, addPath, v6, withdraws, locRIB, postPolicy)
	// Every route is announced, and the withdrawn ones withdrawn, in three
	// views (pre-policy, post-policy, Loc-RIB); Add-Path ids appear on B's
	// pre- and post-policy routes and on Loc-RIB.
	if routes < 3*(perRound+withdrawn) || addPath < 2*perRound || v6 < 3*v6PerRound || withdraws < 3*withdrawn || locRIB < perRound || postPolicy < perRound {
		t.Errorf("decoded route events lack the expected volume, Add-Path ids, withdrawals, Loc-RIB or post-policy routes")
	}
}

// peerGoBGP configures a session between router a (active) and b (passive),
// for IPv4 and IPv6 unicast, with b sending Add-Path to a if addPath.
func peerGoBGP(t testing.TB, a, b *gobgpRouter, addPath bool) {
	t.Helper()
	families := func(recv bool, sendMax uint32) []*api.AfiSafi {
		var out []*api.AfiSafi
		for _, afi := range []api.Family_Afi{api.Family_AFI_IP, api.Family_AFI_IP6} {
			as := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true}}
			if addPath {
				as.AddPaths = &api.AddPaths{Config: &api.AddPathsConfig{Receive: recv, SendMax: sendMax}}
			}
			out = append(out, as)
		}
		return out
	}
	add := func(self, other *gobgpRouter, passive bool, afs []*api.AfiSafi) {
		if err := self.srv.AddPeer(context.Background(), &api.AddPeerRequest{Peer: &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: other.addr, PeerAsn: gobgpAS},
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
