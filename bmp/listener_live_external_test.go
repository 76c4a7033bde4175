package bmp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
)

// Routes the feeder announces to an external router, of which it withdraws some.
const feedV4, feedV6, feedWithdrawn = 2000, 1000, 200

// TestLiveGoBGPDaemon runs Debian's gobgpd (3.10) as the BMP sender with
// route-monitoring-policy "all" (pre-policy, post-policy, Loc-RIB). An
// in-process GoBGP feeder gives it 3,000 IPv4 and IPv6 routes over iBGP,
// withdraws 200 and goes down; gobgpd is then stopped (Termination). A tap
// records what gobgpd sent: the spool must hold exactly that, and decode.
func TestLiveGoBGPDaemon(t *testing.T) {
	gobgpd := testenv.Binary(t, "gobgpd", "gobgpd")
	sp := openRealSpool(t)
	st := startListener(t, sp, nil)
	tap := startTap(t, st.addr)
	tapHost, tapPort, _ := net.SplitHostPort(tap.addr)

	dir := t.TempDir()
	port, grpcPort := testenv.FreePorts(t, "127.0.0.2", 1)[0], testenv.FreePorts(t, "127.0.0.1", 1)[0]
	conf := fmt.Sprintf(`[global.config]
  as = %[1]d
  router-id = "127.0.0.2"
  port = %[2]d
  local-address-list = ["127.0.0.2"]
[[bmp-servers]]
  [bmp-servers.config]
    address = "%[3]s"
    port = %[4]s
    route-monitoring-policy = "all"
    sys-name = "bgpedge-test-gobgpd"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.4"
    peer-as = %[1]d
  [neighbors.transport.config]
    passive-mode = true
    local-address = "127.0.0.2"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
`, gobgpAS, port, tapHost, tapPort)
	confPath := filepath.Join(dir, "gobgpd.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gobgpd, "-f", confPath, "--api-hosts", "127.0.0.1:"+strconv.Itoa(grpcPort), "--pprof-disable", "-p", "-l", "warn")
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	stop := startProcess(t, cmd)

	feedAndCheck(t, sp, tap, "127.0.0.2", port, stop, true)
}

// TestLiveFRR runs FRR's bgpd with the BMP module as the sender (pre- and
// post-policy IPv4, pre-policy IPv6, stats), fed and then left by the same
// in-process GoBGP feeder; bgpd is then stopped. A tap records what bgpd
// sent: the spool must hold exactly that, and decode.
func TestLiveFRR(t *testing.T) {
	bgpd := testenv.Binary(t, "bgpd", "frr")
	sp := openRealSpool(t)
	st := startListener(t, sp, nil)
	tap := startTap(t, st.addr)
	tapHost, tapPort, _ := net.SplitHostPort(tap.addr)

	dir := t.TempDir()
	port := testenv.FreePorts(t, "127.0.0.6", 1)[0]
	conf := fmt.Sprintf(`hostname bgpedge-test-frr
router bgp %[1]d
 bgp router-id 127.0.0.6
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 127.0.0.4 remote-as %[1]d
 neighbor 127.0.0.4 passive
 address-family ipv4 unicast
  neighbor 127.0.0.4 activate
  neighbor 127.0.0.4 soft-reconfiguration inbound
 exit-address-family
 address-family ipv6 unicast
  neighbor 127.0.0.4 activate
  neighbor 127.0.0.4 soft-reconfiguration inbound
 exit-address-family
 bmp targets test
  bmp connect %[2]s port %[3]s min-retry 100 max-retry 1000
  bmp monitor ipv4 unicast pre-policy
  bmp monitor ipv4 unicast post-policy
  bmp monitor ipv6 unicast pre-policy
  bmp stats interval 5000
 exit
exit
`, gobgpAS, tapHost, tapPort)
	confPath := filepath.Join(dir, "bgpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// bgpd drops privileges to the frr user when started as root: it must
	// be able to read its config and write its pid file and vty socket.
	if os.Geteuid() == 0 {
		if u, err := user.Lookup("frr"); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			for _, p := range []string{dir, confPath} {
				if err := os.Chown(p, uid, gid); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	cmd := exec.Command(bgpd, "-M", "bmp", "-Z", "-S", "-n", "-l", "127.0.0.6", "-p", strconv.Itoa(port),
		"-f", confPath, "-i", filepath.Join(dir, "bgpd.pid"), "--vty_socket", dir, "-P", "0")
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	stop := startProcess(t, cmd)

	feedAndCheck(t, sp, tap, "127.0.0.6", port, stop, false)
}

// feedAndCheck runs the common scenario against an external BMP sender
// listening for BGP on routerAddr:routerPort: connect the feeder, wait for
// the BMP session, announce, withdraw, take the feeder down, stop the
// sender, then compare the spool with the tap and decode everything.
func feedAndCheck(t *testing.T, sp *buffer.Spool, tap *tap, routerAddr string, routerPort int, stop func(), locRIB bool) {
	t.Helper()
	ctx := context.Background()
	feeder := startGoBGP(t, "127.0.0.4", "127.0.0.4")
	var afs []*api.AfiSafi
	for _, afi := range []api.Family_Afi{api.Family_AFI_IP, api.Family_AFI_IP6} {
		afs = append(afs, &api.AfiSafi{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true}})
	}
	if err := feeder.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: routerAddr, PeerAsn: gobgpAS},
		Transport: &api.Transport{LocalAddress: "127.0.0.4", RemotePort: uint32(routerPort)},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, IdleHoldTimeAfterReset: 1, HoldTime: 30, KeepaliveInterval: 10}},
		AfiSafis:  afs,
	}}); err != nil {
		t.Fatal(err)
	}
	waitEstablished(t, feeder.srv, 1)
	testenv.Eventually(t, 60*time.Second, "BMP session with the router's Peer Up", func() bool {
		return countTypes(readAllRecords(t, sp))[int(MsgPeerUp)] >= 1
	})

	var paths []*apiutil.Path
	for i := range feedV4 {
		paths = append(paths, gobgpPath(t, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), "192.0.2.254", 100))
	}
	for i := range feedV6 {
		paths = append(paths, gobgpPath(t, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i)}), 48), "2001:db8::254", 100))
	}
	resp, err := feeder.srv.AddPath(apiutil.AddPathRequest{Paths: paths})
	if err != nil {
		t.Fatal(err)
	}
	rm := func() int { return countTypes(readAllRecords(t, sp))[int(MsgRouteMonitoring)] }
	// Pre- and post-policy each carry every IPv4 route at least once.
	testenv.Eventually(t, 90*time.Second, "route monitoring for the routes", func() bool { return rm() >= 2*feedV4 })
	waitQuiet(t, sp)

	del := apiutil.DeletePathRequest{}
	for _, r := range resp[:feedWithdrawn] {
		del.UUIDs = append(del.UUIDs, r.UUID)
	}
	before := rm()
	if err := feeder.srv.DeletePath(del); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "route monitoring for the withdrawals", func() bool { return rm() >= before+feedWithdrawn })
	waitQuiet(t, sp)

	if err := feeder.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "peer down", func() bool {
		return countTypes(readAllRecords(t, sp))[int(MsgPeerDown)] >= 1
	})
	waitQuiet(t, sp)
	stop()

	sent, source := tap.wait(t)
	checkSpoolMatches(t, sp, source, sent)
	got := walkTypes(t, sent)
	t.Logf("router sent %d bytes: %v (0 RM, 1 stats, 2 peer down, 3 peer up, 4 init, 5 term)", len(sent), got)
	var routes, v6, withdraws, post, loc int
	for _, ev := range decodeAll(t, sp, source) {
		if ev.Route == nil {
			continue
		}
		routes++
		if ev.Route.AFI == 2 {
			v6++
		}
		if ev.Route.Action == "withdraw" {
			withdraws++
		}
		if ev.Peer != nil && ev.Peer.Type == "loc-rib" {
			loc++
		} else if ev.Peer != nil && ev.Peer.Flags&FlagL != 0 {
			post++
		}
	}
	t.Logf("decoded %d route events: %d IPv6, %d withdrawals, %d post-policy, %d Loc-RIB", routes, v6, withdraws, post, loc)
	if routes < 2*feedV4+feedV6 || v6 < feedV6 || withdraws < feedWithdrawn || post < feedV4 || (locRIB && loc < feedV4+feedV6) {
		t.Errorf("decoded route events lack the routes the feeder announced and withdrew")
	}
	if got[int(MsgInitiation)] != 1 || got[int(MsgPeerDown)] < 1 {
		t.Errorf("unexpected message mix %v", got)
	}
}

// startProcess starts an external sender and returns a function that stops
// it with SIGTERM (so it can say goodbye: a BMP Termination or close) and
// waits for it; cleanup kills it if the test ends first.
func startProcess(t testing.TB, cmd *exec.Cmd) (stop func()) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	return stop
}
