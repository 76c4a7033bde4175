package exabgp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

func commandsConfig(natsURL, gAddr string, maxRoutes int) string {
	return fmt.Sprintf(`  commands:
    enabled: true
    ack_timeout: 3s
    nats:
      url: %s
  policy:
    allowed_verbs: [announce-route, withdraw-route, announce-flow, withdraw-flow, route-refresh]
    allowed_prefixes: ["100.100.0.0/16", "203.0.113.0/24"]
    max_prefix_length_v4: 28
    allowed_next_hops: ["192.0.2.0/24"]
    allowed_neighbors: ["%s", "10.9.9.9"]
    max_routes: %d
    rate_per_second: 100
    rate_burst: 100
`, natsURL, gAddr, maxRoutes)
}

// routesCLI runs `bgpedge routes …` and returns its reply.
func routesCLI(t *testing.T, bin, natsURL string, args ...string) (Reply, error) {
	t.Helper()
	full := append(args, "--agent", "edge-test", "--nats", natsURL, "--timeout", "20s")
	cmd := exec.Command(bin, append([]string{"routes"}, full...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var rep Reply
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("routes %v: no reply (%v): %s %s", args, err, out, stderr.String())
	}
	return rep, err
}

type labEnv struct {
	bin, natsURL, metrics, dir, yaml string
	g                                *gobgpPeer
	e                                *exaBGP
}

func startLab(t *testing.T, maxRoutes int) *labEnv {
	t.Helper()
	l := &labEnv{bin: bgpedgeBinary(t), natsURL: startNATS(t), dir: t.TempDir()}
	gAddr, eAddr := labAddrs()
	l.g = startGoBGP(t, gAddr, eAddr)
	l.metrics = fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1"))
	l.yaml = labConfig(t, l.dir, l.metrics, commandsConfig(l.natsURL, gAddr, maxRoutes))
	l.e = startExaBGP(t, l.dir, exabgpConf(l.bin, l.yaml, l.g))
	testenv.Eventually(t, 30*time.Second, "exaBGP session with GoBGP established", l.g.established)
	testenv.Eventually(t, 30*time.Second, "bgpedge process serving metrics", func() bool {
		return metric(l.metrics, "bgpedge_exabgp_spool_available") == 1
	})
	return l
}

// TestExaBGPRouteCommands: commands from central reach GoBGP through exaBGP;
// policy rejections never reach exaBGP; exaBGP's error and missing ack are
// answered as such; list shows the journal.
func TestExaBGPRouteCommands(t *testing.T) {
	l := startLab(t, 5)
	g := l.g

	rep, err := routesCLI(t, l.bin, l.natsURL, "announce", "100.100.1.0/24", "--next-hop", "192.0.2.254", "--neighbor", g.addr,
		"--med", "5", "--community", "65001:7", "--as-path", "65001,65020")
	if err != nil || rep.Result != ResultDone {
		t.Fatalf("announce: %v %+v", err, rep)
	}
	testenv.Eventually(t, 30*time.Second, "announced route in GoBGP's adj-in", func() bool {
		return g.adjIn(t, bgp.RF_IPv4_UC)["100.100.1.0/24"]
	})

	rep, err = routesCLI(t, l.bin, l.natsURL, "request",
		`{"verb":"announce-flow","neighbors":["`+g.addr+`"],"flow":{"match":{"destination":"203.0.113.9/32","protocol":["udp"],"destination_port":["=53"]},"then":{"discard":true}}}`)
	if err != nil || rep.Result != ResultDone {
		t.Fatalf("announce-flow: %v %+v", err, rep)
	}
	testenv.Eventually(t, 30*time.Second, "flow rule in GoBGP's adj-in", func() bool {
		return len(g.adjIn(t, bgp.RF_FS_IPv4_UC)) == 1
	})

	rep, err = routesCLI(t, l.bin, l.natsURL, "list")
	if err != nil || rep.Result != ResultOK || len(rep.Routes) != 2 || !strings.Contains(mustJSON(rep.Routes), "100.100.1.0/24") {
		t.Fatalf("list: %v %+v", err, rep)
	}

	// Outside the policy: answered with the reason, never written to exaBGP.
	rejects := []struct {
		args   []string
		reason string
	}{
		{[]string{"announce", "10.1.0.0/24", "--next-hop", "192.0.2.254", "--neighbor", g.addr}, "outside the allowed prefixes"},
		{[]string{"announce", "100.100.2.0/29", "--next-hop", "192.0.2.254", "--neighbor", g.addr}, "longer than /28"},
		{[]string{"announce", "100.100.2.0/24", "--next-hop", "198.51.100.1", "--neighbor", g.addr}, "next hop 198.51.100.1 not allowed"},
		{[]string{"announce", "100.100.2.0/24", "--next-hop", "192.0.2.254", "--neighbor", "10.0.0.1"}, "neighbor 10.0.0.1 not allowed"},
		{[]string{"announce", "100.100.2.0/24", "--next-hop", "192.0.2.254"}, "neighbor selector is required"},
		{[]string{"announce", "100.100.2.0/24", "--next-hop", "192.0.2.254", "--neighbor", g.addr, "--community", "1:2 ] next-hop self"}, "invalid community"},
	}
	for _, r := range rejects {
		rep, err := routesCLI(t, l.bin, l.natsURL, r.args...)
		if err == nil || rep.Result != ResultRejected || !strings.Contains(rep.Reason, r.reason) {
			t.Errorf("%v: want rejected %q, got %v %+v", r.args, r.reason, err, rep)
		}
	}
	if got := metric(l.metrics, `bgpedge_exabgp_commands_total{result="rejected",verb="announce-route"}`); got != float64(len(rejects)) {
		t.Errorf("rejected counter %v, want %d", got, len(rejects))
	}
	if g.adjIn(t, bgp.RF_IPv4_UC)["10.1.0.0/24"] {
		t.Error("rejected route reached GoBGP")
	}

	// exaBGP itself rejects a neighbor it does not have.
	rep, err = routesCLI(t, l.bin, l.natsURL, "announce", "100.100.3.0/24", "--next-hop", "192.0.2.254", "--neighbor", "10.9.9.9")
	if err == nil || rep.Result != ResultError {
		t.Fatalf("unknown neighbor: want error from exaBGP, got %v %+v", err, rep)
	}
	// exaBGP never acks a community it cannot encode: answered with a timeout.
	rep, err = routesCLI(t, l.bin, l.natsURL, "announce", "100.100.4.0/24", "--next-hop", "192.0.2.254", "--neighbor", g.addr, "--community", "70000:1")
	if err == nil || rep.Result != ResultTimeout {
		t.Fatalf("no ack: want timeout, got %v %+v", err, rep)
	}
	// After the ghost period the next command gets its own ack.
	rep, err = routesCLI(t, l.bin, l.natsURL, "withdraw", "100.100.1.0/24", "--neighbor", g.addr)
	if err != nil || rep.Result != ResultDone {
		t.Fatalf("withdraw: %v %+v", err, rep)
	}
	testenv.Eventually(t, 30*time.Second, "withdrawn route gone from GoBGP's adj-in", func() bool {
		return !g.adjIn(t, bgp.RF_IPv4_UC)["100.100.1.0/24"]
	})
	rep, err = routesCLI(t, l.bin, l.natsURL, "list")
	if err != nil || len(rep.Routes) != 1 || !strings.HasPrefix(rep.Routes[0].Body, "announce flow route") {
		t.Fatalf("list after withdraw: %v %+v", err, rep)
	}
	b, err := os.ReadFile(filepath.Join(l.dir, "exabgp", "routes.json"))
	if err != nil || strings.Contains(string(b), "100.100.1.0/24") || !strings.Contains(string(b), "203.0.113.9/32") {
		t.Fatalf("journal: %v %s", err, b)
	}
}

// TestExaBGPProcessKilled: the bgpedge process is killed while GoBGP streams
// routes. exaBGP respawns it and does not exit; everything the first process
// had made durable is still in the spool; the injected route is announced
// again by the new process, and after a full exaBGP restart too.
func TestExaBGPProcessKilled(t *testing.T) {
	l := startLab(t, 10)
	g := l.g
	rep, err := routesCLI(t, l.bin, l.natsURL, "announce", "100.100.9.0/24", "--next-hop", "192.0.2.254", "--neighbor", g.addr)
	if err != nil || rep.Result != ResultDone {
		t.Fatalf("announce: %v %+v", err, rep)
	}

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent atomic.Int64
	wg.Add(1)
	go func() { // GoBGP streams routes until told to stop
		defer wg.Done()
		nh, _ := bgp.NewPathAttributeNextHop(mustAddr("192.0.2.254"))
		for i := 0; ctx.Err() == nil && i < 60000; i++ {
			nlri, _ := bgp.NewIPAddrPrefix(v4Prefix(i % 4096))
			p := mustPath(t, bgp.RF_IPv4_UC, nlri, false, bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeMultiExitDisc(uint32(i)), bgp.NewPathAttributeLocalPref(100))
			if _, err := g.s.AddPath(apiutilAdd(p)); err != nil {
				return
			}
			sent.Add(1)
		}
	}()
	defer func() { stop(); wg.Wait() }()

	var durable float64
	testenv.Eventually(t, 60*time.Second, "first process spooling the stream", func() bool {
		durable = metric(l.metrics, "bgpedge_exabgp_spooled_records_total")
		return durable > 200
	})
	old := l.e.childPID()
	if old == 0 {
		t.Fatal("no bgpedge child of exaBGP")
	}
	durable = metric(l.metrics, "bgpedge_exabgp_spooled_records_total") // acknowledged to the spool before the kill
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "exaBGP respawned bgpedge", func() bool {
		pid := l.e.childPID()
		return pid != 0 && pid != old && metric(l.metrics, "bgpedge_exabgp_spool_available") == 1
	})
	testenv.Eventually(t, 30*time.Second, "new process replayed the injected route", func() bool {
		return metric(l.metrics, "bgpedge_exabgp_replayed_routes_total") >= 1
	})
	stop()
	wg.Wait()
	if !l.e.running() || !g.established() {
		t.Fatal("exaBGP exited or the session dropped after the process was killed")
	}
	t.Logf("GoBGP sent %d updates; %v records durable before the kill", sent.Load(), durable)

	// A full exaBGP restart: the session drops (GoBGP forgets the route),
	// the new process announces it again from its journal.
	l.e.stop()
	testenv.Eventually(t, 30*time.Second, "route gone from GoBGP after exaBGP stopped", func() bool {
		return !g.adjIn(t, bgp.RF_IPv4_UC)["100.100.9.0/24"]
	})
	recs := readSpool(t, filepath.Join(l.dir, "exabgp", "spool"))
	if float64(len(recs)) < durable {
		t.Fatalf("spool holds %d records, %v were durable before the kill", len(recs), durable)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("gap in spool: %d then %d", recs[i-1].Seq, recs[i].Seq)
		}
	}
	_, _, errs, _, types := decodeAll(t, recs)
	if len(errs) > 0 {
		t.Fatalf("decode errors: %s", errs[0])
	}
	t.Logf("%d records across both processes: %v", len(recs), types)

	l.e = startExaBGP(t, l.dir, exabgpConf(l.bin, l.yaml, g))
	testenv.Eventually(t, 60*time.Second, "injected route announced again after exaBGP restart", func() bool {
		return g.adjIn(t, bgp.RF_IPv4_UC)["100.100.9.0/24"]
	})
	l.e.stop()
	if after := readSpool(t, filepath.Join(l.dir, "exabgp", "spool")); len(after) <= len(recs) || after[len(recs)].Seq != recs[len(recs)-1].Seq+1 {
		t.Fatalf("spool after restart: %d records (was %d)", len(after), len(recs))
	}
}
