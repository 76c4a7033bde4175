package bmp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
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
		out, err := net.Dial("tcp4", station)
		if err != nil {
			tp.err = err
			return
		}
		defer out.Close()
		tp.mu.Lock()
		tp.src = out.LocalAddr().String()
		tp.mu.Unlock()
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

type gobgpRouter struct {
	srv  *server.BgpServer
	addr string
	port int
}

const gobgpAS = 65001 // iBGP everywhere keeps the 192.0.2.x next hops (127/8 ones are invalid to GoBGP)

func startGoBGP(t testing.TB, routerID, addr string) *gobgpRouter {
	t.Helper()
	port := testenv.FreePorts(t, addr, 1)[0]
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
