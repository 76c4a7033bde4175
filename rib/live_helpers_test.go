// The live senders' shared parts: in-process GoBGP v4 routers (BMP senders
// in live_gobgp_test.go, BGP speakers feeding FRR in live_frr_test.go) and
// the read-back of what the agent published. No build constraint: only
// GoBGP's BMP client races (see live_gobgp_test.go), a plain BGP speaker
// runs under the race detector.

package rib_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/rib"
)

const liveAS = 65001 // iBGP everywhere keeps the 192.0.2.x next hops

// liveRouter is an in-process GoBGP v4 router listening on addr:port.
type liveRouter struct {
	srv  *server.BgpServer
	addr string
	port int
}

// startLiveRouter starts a GoBGP v4 router (AS liveAS) on addr, stopped
// when the test ends.
func startLiveRouter(t *testing.T, routerID, addr string) *liveRouter {
	t.Helper()
	port := testenv.FreePorts(t, addr, 1)[0]
	var level slog.LevelVar
	level.Set(slog.LevelError)
	s := server.NewBgpServer(server.LoggerOption(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: &level})), &level))
	go s.Serve()
	if err := s.StartBgp(context.Background(), &api.StartBgpRequest{Global: &api.Global{
		Asn: liveAS, RouterId: routerID, ListenPort: int32(port), ListenAddresses: []string{addr},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.StopBgp(context.Background(), &api.StopBgpRequest{})
		s.Stop()
	})
	return &liveRouter{srv: s, addr: addr, port: port}
}

// testWriter sends a component's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// livePath is route i of a speaker: 10.<third>.<i>/32 with MED med and
// next hop 192.0.2.254 (GoBGP refuses 127/8 next hops).
func livePath(t *testing.T, i int, third byte, med uint32) *apiutil.Path {
	t.Helper()
	nlri, err := bgp.NewIPAddrPrefix(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, third, byte(i >> 8), byte(i)}), 32))
	if err != nil {
		t.Fatal(err)
	}
	nh, err := bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.254"))
	if err != nil {
		t.Fatal(err)
	}
	return &apiutil.Path{Family: bgp.RF_IPv4_UC, Nlri: nlri, Attrs: []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeMultiExitDisc(med), bgp.NewPathAttributeLocalPref(200),
	}}
}

// ribTableCounts asks the agent's GET /rib for the routes held per peer in
// one table; nil while the agent does not answer.
func ribTableCounts(t *testing.T, httpAddr, table string) map[string]uint64 {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/rib?table=" + table)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var rep rib.Report
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&rep) != nil {
		return nil
	}
	out := map[string]uint64{}
	for _, c := range rep.Counts {
		out[c.Peer] = c.Routes
	}
	return out
}

// liveRouteEvent is what the live tests read of a route event.
type liveRouteEvent struct {
	Seq  uint64 `json:"seq"`
	Peer struct {
		Address   string `json:"address"`
		Synthetic bool   `json:"synthetic"`
	} `json:"peer"`
	Route struct {
		Action string  `json:"action"`
		Prefix string  `json:"prefix"`
		MED    *uint32 `json:"med"`
	} `json:"route"`
}

// routeEventsAfter hands fn every route event (End-of-RIB markers left out)
// of the agent's route stream topic (bmp.route.pre-policy, ...) whose
// record came after seq cut.
func routeEventsAfter(t *testing.T, ag *ribAgent, topic string, cut uint64, fn func(ev liveRouteEvent, raw []byte)) {
	t.Helper()
	testenv.ConsumeEach(t, ag.brokers, ag.prefix+topic, time.Minute, func(m *sarama.ConsumerMessage) {
		var ev liveRouteEvent
		if err := json.Unmarshal(m.Value, &ev); err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
		if ev.Seq > cut && ev.Route.Prefix != "" {
			fn(ev, m.Value)
		}
	})
}

// ribEntry is one route of the compacted bmp.rib view.
type ribEntry struct {
	peer, table, prefix string
	med                 uint32
}

// ribView reads the agent's bmp.rib from the beginning and keeps the last
// value per key, as a consumer bootstrapping from it does: a tombstone
// removes the key. Every value must be an announcement with a MED.
func ribView(t *testing.T, ag *ribAgent) map[string]ribEntry {
	t.Helper()
	view := map[string]ribEntry{}
	testenv.ConsumeEach(t, ag.brokers, ag.prefix+"bmp.rib", time.Minute, func(m *sarama.ConsumerMessage) {
		if m.Value == nil {
			delete(view, string(m.Key))
			return
		}
		var ev liveRouteEvent
		if err := json.Unmarshal(m.Value, &ev); err != nil || ev.Route.MED == nil {
			t.Fatalf("bmp.rib %s: %v %s", m.Key, err, m.Value)
		}
		// router|peer RD|peer address|route RD|prefix|table|family|path id
		parts := strings.Split(string(m.Key), "|")
		if len(parts) != 8 {
			t.Fatalf("bmp.rib key %q: want 8 fields", m.Key)
		}
		view[string(m.Key)] = ribEntry{peer: parts[2], prefix: parts[4], table: parts[5], med: *ev.Route.MED}
	})
	return view
}

// liveIndex is the route number i of a 10.<third>.<i>/32 prefix of livePath.
func liveIndex(t *testing.T, prefix string) (third byte, i int) {
	t.Helper()
	p, err := netip.ParsePrefix(prefix)
	if err != nil || !p.Addr().Is4() {
		t.Fatalf("route %q is not one of livePath's", prefix)
	}
	a := p.Addr().As4()
	return a[1], int(a[2])<<8 | int(a[3])
}

// ribMetrics lists the route state's and the forwarder's metrics, for a
// failure's message.
func ribMetrics(m map[string]float64) string {
	var lines []string
	for k, v := range m {
		if strings.HasPrefix(k, "bgpedge_rib_") || strings.HasPrefix(k, "bgpedge_forwarder_") || strings.HasPrefix(k, "bgpedge_bmp_") {
			lines = append(lines, fmt.Sprintf("%s %v", k, v))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
