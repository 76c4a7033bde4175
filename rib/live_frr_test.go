package rib_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/rib"
)

// frrRouter is Debian's FRR bgpd with the BMP module, started by the test
// on loopback: BGP on addr:port, no zebra, no kernel, its vty socket and
// log in its own directory.
type frrRouter struct {
	addr, dir, vtysh string
	port             int
	log              string
}

// startFRR starts bgpd (vtysh asks it) as router 127.0.0.6 (AS liveAS),
// with the speakers as iBGP neighbors and a BMP target bmpAddr monitoring
// IPv4 unicast pre- and post-policy. bgpd connects to the speakers every
// second until up (GoBGP's own first connect waits 5–10 s), and to its BMP
// target every 100 ms to 1 s. It is stopped when the test ends.
func startFRR(t *testing.T, bgpd, vtysh, bmpAddr string, speakers ...*liveRouter) *frrRouter {
	t.Helper()
	r := &frrRouter{addr: "127.0.0.6", dir: t.TempDir(), vtysh: vtysh}
	r.port = testenv.FreePorts(t, r.addr, 1)[0]
	r.log = filepath.Join(r.dir, "bgpd.log")
	bmpHost, bmpPort, err := net.SplitHostPort(bmpAddr)
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("hostname bgpedge-rib-frr\nrouter bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n no bgp network import-check\n", liveAS, r.addr)
	for _, s := range speakers {
		conf += fmt.Sprintf(" neighbor %[1]s remote-as %[2]d\n neighbor %[1]s port %[3]d\n neighbor %[1]s update-source %[4]s\n neighbor %[1]s timers connect 1\n",
			s.addr, liveAS, s.port, r.addr)
	}
	conf += " address-family ipv4 unicast\n"
	for _, s := range speakers {
		// Without the kept Adj-RIB-In, FRR 8.4's pre-policy route
		// monitoring messages are all withdrawals.
		conf += fmt.Sprintf("  neighbor %[1]s activate\n  neighbor %[1]s soft-reconfiguration inbound\n", s.addr)
	}
	conf += fmt.Sprintf(` exit-address-family
 bmp targets bgpedge
  bmp connect %s port %s min-retry 100 max-retry 1000
  bmp monitor ipv4 unicast pre-policy
  bmp monitor ipv4 unicast post-policy
 exit
exit
`, bmpHost, bmpPort)
	confPath := filepath.Join(r.dir, "bgpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// Started as root, bgpd drops to the frr user: it must be able to
	// read its configuration and write its pid file and vty socket.
	if os.Geteuid() == 0 {
		if u, err := user.Lookup("frr"); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			for _, p := range []string{r.dir, confPath} {
				if err := os.Chown(p, uid, gid); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	logf, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bgpd, "-M", "bmp", "-Z", "-S", "-n", "-l", r.addr, "-p", strconv.Itoa(r.port),
		"-f", confPath, "-i", filepath.Join(r.dir, "bgpd.pid"), "--vty_socket", r.dir, "-P", "0")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(r.log)
			t.Logf("bgpd log:\n%s", out)
		}
	})
	testenv.Eventually(t, 30*time.Second, "bgpd answering on its vty", func() bool {
		select {
		case <-exited:
			out, _ := os.ReadFile(r.log)
			t.Fatalf("bgpd exited at start:\n%s", out)
		default:
		}
		_, err := r.show("show bgp ipv4 unicast summary json")
		return err == nil
	})
	return r
}

// show runs a vtysh command against this bgpd.
func (r *frrRouter) show(command string) ([]byte, error) {
	out, err := exec.Command(r.vtysh, "--vty_socket", r.dir, "-c", command).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("vtysh %q: %w: %s", command, err, out)
	}
	return out, nil
}

// received is the number of routes bgpd holds from neighbor (-1 while the
// session is not established).
func (r *frrRouter) received(neighbor string) int {
	out, err := r.show("show bgp ipv4 unicast summary json")
	if err != nil {
		return -1
	}
	var sum struct {
		Peers map[string]struct {
			State  string `json:"state"`
			PfxRcd int    `json:"pfxRcd"`
		} `json:"peers"`
	}
	if json.Unmarshal(out, &sum) != nil {
		return -1
	}
	p, ok := sum.Peers[neighbor]
	if !ok || p.State != "Established" {
		return -1
	}
	return p.PfxRcd
}

// med is the MED of bgpd's route to prefix (-1 if it has none).
func (r *frrRouter) med(prefix string) int {
	out, err := r.show("show bgp ipv4 unicast " + prefix + " json")
	if err != nil {
		return -1
	}
	var route struct {
		Paths []struct {
			MED *int `json:"metric"`
		} `json:"paths"`
	}
	if json.Unmarshal(out, &route) != nil || len(route.Paths) != 1 || route.Paths[0].MED == nil {
		return -1
	}
	return *route.Paths[0].MED
}

// waitReceived waits until bgpd holds n routes from neighbor.
func (r *frrRouter) waitReceived(t *testing.T, neighbor string, n int) {
	t.Helper()
	testenv.Eventually(t, time.Minute, fmt.Sprintf("FRR holding %d routes from %s", n, neighbor), func() bool {
		return r.received(neighbor) == n
	})
}

// feed makes speaker s a passive iBGP peer of bgpd for IPv4 unicast.
func (r *frrRouter) feed(t *testing.T, s *liveRouter) {
	t.Helper()
	if err := s.srv.AddPeer(context.Background(), &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: r.addr, PeerAsn: liveAS},
		Transport: &api.Transport{LocalAddress: s.addr, PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: 30, KeepaliveInterval: 10}},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{
			Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}}},
	}}); err != nil {
		t.Fatal(err)
	}
}

// TestRIBLiveFRR is TestRIBLiveGoBGP with Debian's FRR bgpd (-M bmp) as the
// BMP sender: it reports, pre- and post-policy, the routes it learns over
// iBGP from two in-process GoBGP v4 speakers, B (6,000) and C (5,000), to
// `bgpedge run` with the route state on and the real broker.
//
//   - C's session flaps (C disables, then enables its peer). FRR reports a
//     Peer Down: while C is down, the compacted bmp.rib (last value per key)
//     holds none of C's routes; once C is back, all of them again.
//   - FRR's BMP session is cut (a gate: no Peer Down, no Termination, as a
//     network failure). While it is down B withdraws 300 routes and changes
//     the MED of 300. FRR reconnects on its own and re-sends its table:
//     the route streams get no event for the unchanged routes (B's or C's),
//     one for each changed route and a withdraw for each route gone, in
//     both tables; bmp.rib ends as B's and C's tables.
//
// What FRR 8.4 does, as observed (and relied on here): when a monitored
// peer's session ends it sends a Peer Down, and the route state withdraws
// the peer's routes synthetically; after a BMP reconnect it sends Peer Up
// per established peer, its whole table (pre- and post-policy) and then an
// End-of-RIB per peer and table, at which the route state withdraws what
// FRR did not re-send. The stale timeout is set far beyond the test's
// deadlines, so only those End-of-RIBs can clear the stale routes.
func TestRIBLiveFRR(t *testing.T) {
	bgpd, vtysh := testenv.Binary(t, "bgpd", "frr"), testenv.Binary(t, "vtysh", "frr")
	ag := startRIBAgent(t, "10m", `
  kafka:`)
	ag.run.Start()
	ctx := context.Background()
	// FRR reaches the agent through a gate, which can cut the BMP session
	// the way a network failure does.
	gate := testenv.NewGate(t, testenv.LoopbackAddr(t), ag.bmpAddr)
	b := startLiveRouter(t, "10.0.0.2", "127.0.0.2")
	c := startLiveRouter(t, "10.0.0.3", "127.0.0.3")
	frr := startFRR(t, bgpd, vtysh, gate.Addr(), b, c)
	frr.feed(t, b)
	frr.feed(t, c)

	const bRoutes, cRoutes, gone, changed = 6000, 5000, 300, 300
	tables := []string{rib.TableAdjInPre, rib.TableAdjInPost}
	var bPaths, cPaths []*apiutil.Path
	for i := range bRoutes {
		bPaths = append(bPaths, livePath(t, i, 1, 100))
	}
	for i := range cRoutes {
		cPaths = append(cPaths, livePath(t, i, 2, 300))
	}
	if _, err := b.srv.AddPath(apiutil.AddPathRequest{Paths: bPaths}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.srv.AddPath(apiutil.AddPathRequest{Paths: cPaths}); err != nil {
		t.Fatal(err)
	}
	frr.waitReceived(t, "127.0.0.2", bRoutes)
	frr.waitReceived(t, "127.0.0.3", cRoutes)
	held := func(table, peer string) uint64 { return ribTableCounts(t, ag.run.HTTP, table)[peer] }
	waitHeld := func(what string, b, c uint64) {
		t.Helper()
		testenv.Eventually(t, time.Minute, what, func() bool {
			for _, table := range tables {
				if held(table, "127.0.0.2") != b || held(table, "127.0.0.3") != c {
					return false
				}
			}
			return ag.run.Metrics()["bgpedge_buffer_records"] == 0
		})
	}
	waitHeld("both peers' routes in the route state, pre- and post-policy", bRoutes, cRoutes)

	// viewCounts is the compacted bmp.rib per peer and table; it checks
	// each route against want (peer, route number): its MED, or that the
	// route must not be there.
	viewCounts := func(when string, want func(peer string, i int) (med uint32, held bool)) map[string]int {
		t.Helper()
		n := map[string]int{}
		bad := 0
		for k, r := range ribView(t, ag) {
			n[r.peer+" "+r.table]++
			_, i := liveIndex(t, r.prefix)
			if med, ok := want(r.peer, i); !ok || r.med != med {
				if bad++; bad < 5 {
					t.Errorf("%s: bmp.rib %s: MED %d, want %d (held %v)", when, k, r.med, med, ok)
				}
			}
		}
		return n
	}
	initial := func(peer string, _ int) (uint32, bool) {
		if peer == "127.0.0.3" {
			return 300, true
		}
		return 100, true
	}
	wantView := func(when string, got map[string]int, b, c int) {
		t.Helper()
		for _, table := range tables {
			if got["127.0.0.2 "+table] != b || got["127.0.0.3 "+table] != c {
				t.Errorf("%s: compacted bmp.rib per peer and table %v: want %d of B's and %d of C's routes in each table", when, got, b, c)
				return
			}
		}
	}

	// (a) C flaps. While it is down, none of its routes is in bmp.rib.
	start := time.Now()
	synthBefore := ag.run.Metrics()["bgpedge_rib_synthetic_withdraws_total"]
	if err := c.srv.DisablePeer(ctx, &api.DisablePeerRequest{Address: frr.addr}); err != nil {
		t.Fatal(err)
	}
	waitHeld("C's routes withdrawn after its Peer Down", bRoutes, 0)
	t.Logf("C down: %v of its %d routes (pre- and post-policy) withdrawn synthetically at FRR's Peer Down",
		ag.run.Metrics()["bgpedge_rib_synthetic_withdraws_total"]-synthBefore, 2*cRoutes)
	wantView("C down", viewCounts("C down", initial), bRoutes, 0)
	if err := c.srv.EnablePeer(ctx, &api.EnablePeerRequest{Address: frr.addr}); err != nil {
		t.Fatal(err)
	}
	// Back: the route state holds C's routes again (the compacted view is
	// read at the end, with C's routes unchanged since).
	waitHeld("C's routes back after it came up", bRoutes, cRoutes)
	t.Logf("C's flap, down and up, checked in %v", time.Since(start).Round(time.Millisecond))
	cut := uint64(ag.run.Metrics()["bgpedge_forwarder_acked_seq"])

	// (b) The BMP session is cut; B changes its table meanwhile.
	start = time.Now()
	gate.Close()
	testenv.Eventually(t, time.Minute, "BMP session closed", func() bool { return ag.run.Metrics()["bgpedge_bmp_sessions_active"] == 0 })
	// By path, not by UUID: GoBGP v4.8.0 deletes UUIDs in time quadratic
	// in the table size (tens of seconds here).
	del := apiutil.DeletePathRequest{Paths: bPaths[:gone]}
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
	frr.waitReceived(t, "127.0.0.2", bRoutes-gone)
	lastChanged := livePath(t, gone+changed-1, 1, 101).Nlri.String()
	testenv.Eventually(t, time.Minute, "FRR holding B's changed routes", func() bool { return frr.med(lastChanged) == 101 })
	gate.Open() // FRR reconnects on its own and sends its table again
	if ok, last := testenv.Poll(time.Minute, func() (bool, string) {
		m := ag.run.Metrics()
		pre, post := held(rib.TableAdjInPre, "127.0.0.2"), held(rib.TableAdjInPost, "127.0.0.2")
		return m["bgpedge_bmp_sessions_active"] == 1 && m["bgpedge_rib_stale_routes"] == 0 && m["bgpedge_buffer_records"] == 0 &&
				pre == bRoutes-gone && post == bRoutes-gone,
			fmt.Sprintf("sessions %v, stale %v, unacknowledged %v, B's routes held pre %d post %d (want %d)", m["bgpedge_bmp_sessions_active"],
				m["bgpedge_rib_stale_routes"], m["bgpedge_buffer_records"], pre, post, bRoutes-gone)
	}); !ok {
		t.Fatalf("FRR's table not re-sent, or routes still stale, after a minute: %s\n%s", last, ag.run.Log())
	}
	t.Logf("BMP cut, B changed, FRR reconnected and the route state settled in %v", time.Since(start).Round(time.Millisecond))

	// The route streams after the cut: only B's changes and withdraws.
	for _, topic := range []string{"bmp.route.pre-policy", "bmp.route.post-policy"} {
		announced, withdrawn, synthetic := map[string]bool{}, map[string]bool{}, map[string]bool{}
		unexpected := 0
		routeEventsAfter(t, ag, topic, cut, func(ev liveRouteEvent, raw []byte) {
			third, i := liveIndex(t, ev.Route.Prefix)
			switch {
			case third == 1 && i < gone && ev.Route.Action == "withdraw":
				withdrawn[ev.Route.Prefix] = true
				if ev.Peer.Synthetic {
					synthetic[ev.Route.Prefix] = true
				}
			case third == 1 && i >= gone && i < gone+changed && ev.Route.MED != nil && *ev.Route.MED == 101:
				announced[ev.Route.Prefix] = true
			default:
				if unexpected++; unexpected < 5 {
					t.Errorf("%s after the reconnect: an event for an unchanged route: %s", topic, raw)
				}
			}
		})
		// FRR dropped the routes before it reconnected: only bgpedge, at
		// FRR's End-of-RIB, can withdraw them.
		if len(withdrawn) != gone || len(synthetic) != gone || len(announced) != changed || unexpected != 0 {
			t.Errorf("%s after the reconnect: %d of the %d routes gone withdrawn (%d synthetically), %d of the %d changed announced, %d other events (want 0)",
				topic, len(withdrawn), gone, len(synthetic), len(announced), changed, unexpected)
		}
		t.Logf("%s after the reconnect: %d withdraws (%d synthetic), %d changed announcements", topic, len(withdrawn), len(synthetic), len(announced))
	}

	// The compacted view: B's table as changed, C's untouched.
	final := func(peer string, i int) (uint32, bool) {
		switch {
		case peer == "127.0.0.2" && i < gone:
			return 0, false
		case peer == "127.0.0.2" && i < gone+changed:
			return 101, true
		}
		return initial(peer, i)
	}
	got := viewCounts("after the reconnect", final)
	wantView("after the reconnect", got, bRoutes-gone, cRoutes)
	t.Logf("bmp.rib per peer and table %v", got)
}
