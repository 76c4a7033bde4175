package bmp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
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

	// B announces routes (IPv4 and IPv6, Add-Path) and withdraws them.
	// GoBGP v4.8.0's BMP client goes silent for good after roughly 8,000 to
	// 11,000 Route Monitoring messages in this setup (its Adj-RIB-In keeps
	// receiving; the BMP watcher gets no more events), so the volume here
	// stays below that; TestLiveGoBGPDaemon sends 10,000+ routes through
	// Debian's gobgpd instead. C's routes are a second peer's.
	const rounds, perRound, v6PerRound, cRoutes = 1, 1500, 600, 200
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
		for _, r := range resp {
			del.UUIDs = append(del.UUIDs, r.UUID)
		}
		if err := b.srv.DeletePath(del); err != nil {
			t.Fatal(err)
		}
		waitAccepted(t, a.srv, "127.0.0.2", 0)
		waitQuiet(t, sp)
		t.Logf("round %d done: spool %v", round, countTypes(readAllRecords(t, sp)))
	}

	// C goes down: A reports a Peer Down.
	if err := c.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "peer down", func() bool {
		return countTypes(readAllRecords(t, sp))[int(MsgPeerDown)] >= 1
	})

	// A's BMP client is removed: Termination, then the session ends.
	if err := a.srv.DeleteBmp(ctx, &api.DeleteBmpRequest{Address: tapHost, Port: uint32(port)}); err != nil {
		t.Fatal(err)
	}
	sent, source := tap.wait(t)
	checkSpoolMatches(t, sp, source, sent)

	got := walkTypes(t, sent)
	t.Logf("GoBGP sent %d bytes: %v (0 RM, 1 stats, 2 peer down, 3 peer up, 4 init, 5 term)", len(sent), got)
	if got[int(MsgPeerUp)] < 2 || got[int(MsgPeerDown)] < 1 || got[int(MsgInitiation)] != 1 || got[int(MsgTermination)] != 1 {
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
	// GoBGP v4.8.0 does not report every route it learns over BMP (see the
	// package documentation of this test); the station's duty, checked
	// above, is to spool exactly what was sent. Here: the traffic has the
	// shape the test set up.
	if routes < 3*rounds*perRound || addPath == 0 || withdraws == 0 || locRIB == 0 || postPolicy == 0 {
		t.Errorf("decoded route events lack the expected volume, Add-Path ids, withdrawals, Loc-RIB or post-policy routes")
	}
}

// waitAccepted waits until router s holds n routes from neighbor.
func waitAccepted(t testing.TB, s *server.BgpServer, neighbor string, n int) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d routes from %s", n, neighbor), func() bool {
		total := 0
		s.ListPeer(context.Background(), &api.ListPeerRequest{Address: neighbor}, func(p *api.Peer) {
			for _, af := range p.GetAfiSafis() {
				total += int(af.GetState().GetAccepted())
			}
		})
		return total == n
	})
}

// waitQuiet waits until the spool has not grown for a second: the sender is done.
func waitQuiet(t testing.TB, sp *buffer.Spool) {
	t.Helper()
	last, since := sp.Stats().LastSeq, time.Now()
	testenv.Eventually(t, 60*time.Second, "BMP stream to go quiet", func() bool {
		if n := sp.Stats().LastSeq; n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) > time.Second
	})
}

// checkSpoolMatches requires the spool's BMP records from source to be
// exactly the bytes sent, message by message, in order.
func checkSpoolMatches(t *testing.T, sp *buffer.Spool, source string, sent []byte) {
	t.Helper()
	var spooled [][]byte
	for _, r := range readAllRecords(t, sp) {
		if r.Kind == record.KindBMP && r.Source == source {
			spooled = append(spooled, r.Payload)
		}
	}
	if joined := bytes.Join(spooled, nil); !bytes.Equal(joined, sent) {
		t.Fatalf("spool holds %d messages (%d bytes) from %s; the router sent %d bytes (%v)",
			len(spooled), len(joined), source, len(sent), walkTypes(t, sent))
	}
	t.Logf("spool holds all %d messages (%d bytes) the router sent, in order", len(spooled), len(sent))
}

// decodeAll decodes every record from source with the package's decoder and
// fails on any decode error.
func decodeAll(t *testing.T, sp *buffer.Spool, source string) []record.Event {
	t.Helper()
	dec, err := NewDecoder(DecoderOptions{StateDir: t.TempDir(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var events []record.Event
	errs := 0
	for _, r := range readAllRecords(t, sp) {
		if source != "" && r.Source != source {
			continue
		}
		if err := dec.Decode(r, func(ev record.Event) {
			if ev.Type == EventDecodeError {
				if errs++; errs <= 5 {
					t.Errorf("seq %d: decode error: %+v", r.Seq, ev.Data)
				}
			}
			events = append(events, ev)
		}); err != nil {
			t.Fatalf("seq %d: %v", r.Seq, err)
		}
	}
	if errs > 0 {
		t.Fatalf("%d decode errors", errs)
	}
	return events
}

// tap is a TCP relay between a router and the station that records every
// byte the router sent: the test's oracle of what must reach the spool.
type tap struct {
	addr string
	done chan struct{}
	mu   sync.Mutex
	buf  bytes.Buffer
	src  string // the relay's address as the station sees it
	err  error
}

func startTap(t testing.TB, station string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{addr: ln.Addr().String(), done: make(chan struct{})}
	go func() {
		defer close(tp.done)
		defer ln.Close()
		in, err := ln.Accept() // one router session
		if err != nil {
			tp.err = err
			return
		}
		defer in.Close()
		go func() {
			for {
				c2, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Println("TAP: another connection from", c2.RemoteAddr())
			}
		}()
		out, err := net.Dial("tcp4", station)
		if err != nil {
			tp.err = err
			return
		}
		defer out.Close()
		tp.mu.Lock()
		tp.src = out.LocalAddr().String()
		tp.mu.Unlock()
		go io.Copy(io.Discard, in) // keep the router's side drained (stations never write)
		_, err = io.Copy(io.MultiWriter(out, lockedWriter{&tp.mu, &tp.buf}), in)
		if err != nil {
			tp.err = err
			return
		}
		out.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, out) // until the station has spooled and closed
	}()
	t.Cleanup(func() { ln.Close() })
	return tp
}

// wait returns what the router sent once its session and the station's side have closed.
func (tp *tap) wait(t testing.TB) ([]byte, string) {
	t.Helper()
	select {
	case <-tp.done:
	case <-time.After(60 * time.Second):
		t.Fatal("BMP session through the tap did not end")
	}
	if tp.err != nil {
		t.Fatalf("tap: %v", tp.err)
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Clone(tp.buf.Bytes()), tp.src
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

type gobgpRouter struct {
	srv  *server.BgpServer
	addr string
	port int
}

const gobgpAS = 65001 // iBGP everywhere keeps the 192.0.2.x next hops (127/8 ones are invalid to GoBGP)

func startGoBGP(t testing.TB, routerID, addr string) *gobgpRouter {
	t.Helper()
	port := freePort(t, addr)
	var level slog.LevelVar
	level.Set(slog.LevelWarn)
	s := server.NewBgpServer(server.LoggerOption(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: &level})), &level))
	go s.Serve()
	if err := s.StartBgp(context.Background(), &api.StartBgpRequest{Global: &api.Global{
		Asn: gobgpAS, RouterId: routerID, ListenPort: int32(port), ListenAddresses: []string{addr},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.StopBgp(context.Background(), &api.StopBgpRequest{})
		s.Stop()
	})
	return &gobgpRouter{srv: s, addr: addr, port: port}
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

func waitEstablished(t testing.TB, s *server.BgpServer, n int) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d BGP sessions established", n), func() bool {
		up := 0
		s.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
			if p.GetState().GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED {
				up++
			}
		})
		return up == n
	})
}

func gobgpPath(t testing.TB, prefix netip.Prefix, nexthop string, med uint32) *apiutil.Path {
	t.Helper()
	nlri, err := bgp.NewIPAddrPrefix(prefix)
	if err != nil {
		t.Fatal(err)
	}
	nh, err := bgp.NewPathAttributeNextHop(netip.MustParseAddr(nexthop))
	if err != nil {
		t.Fatal(err)
	}
	family := bgp.RF_IPv4_UC
	if prefix.Addr().Is6() {
		family = bgp.RF_IPv6_UC
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeMultiExitDisc(med),
		bgp.NewPathAttributeLocalPref(200), bgp.NewPathAttributeCommunities([]uint32{65001<<16 | 100}),
	}}
}

// freePort finds a free TCP port on a loopback address.
func freePort(t testing.TB, addr string) int {
	t.Helper()
	ln, err := net.Listen("tcp4", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
