package exabgp

import (
	"bytes"
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
	"github.com/bgpedge/bgpedge/record"
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
	exa                              labExaBGP
	g                                *gobgpPeer
	e                                *exaBGP
}

func startLab(t *testing.T, x labExaBGP, maxRoutes int) *labEnv {
	t.Helper()
	l := &labEnv{bin: bgpedgeBinary(t), natsURL: startNATS(t), dir: t.TempDir(), exa: x}
	gAddr, eAddr := labAddrs()
	l.g = startGoBGP(t, gAddr, eAddr)
	l.metrics = fmt.Sprintf("127.0.0.1:%d", testenv.FreePorts(t, "127.0.0.1", 1)[0])
	l.yaml = labConfig(t, l.dir, l.metrics, commandsConfig(l.natsURL, gAddr, maxRoutes))
	l.e = startExaBGP(t, l.exa, l.dir, exabgpConf(l.bin, l.yaml, l.g))
	testenv.Eventually(t, 30*time.Second, "exaBGP session with GoBGP established", l.g.established)
	testenv.Eventually(t, 30*time.Second, "bgpedge process serving metrics", func() bool {
		return metric(l.metrics, "bgpedge_exabgp_spool_available") == 1
	})
	return l
}

// TestExaBGPRouteCommands: commands from central reach GoBGP through exaBGP;
// policy rejections never reach exaBGP; exaBGP's error and missing ack are
// answered as such; list shows the journal.
func TestExaBGPRouteCommands(t *testing.T) { forEachExaBGP(t, testRouteCommands) }

func testRouteCommands(t *testing.T, x labExaBGP) {
	l := startLab(t, x, 5)
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
	// exaBGP 4.2 never acks a community it cannot encode: answered with a
	// timeout. 5.0 answers it with an error.
	want := ResultTimeout
	if x.version == "5.0" {
		want = ResultError
	}
	rep, err = routesCLI(t, l.bin, l.natsURL, "announce", "100.100.4.0/24", "--next-hop", "192.0.2.254", "--neighbor", g.addr, "--community", "70000:1")
	if err == nil || rep.Result != want {
		t.Fatalf("community 70000:1: want %s, got %v %+v", want, err, rep)
	}
	// After the ghost period the next command gets its own ack.
	rep, err = routesCLI(t, l.bin, l.natsURL, "withdraw", "100.100.1.0/24", "--neighbor", g.addr)
	if err != nil || rep.Result != ResultDone {
		t.Fatalf("withdraw: %v %+v", err, rep)
	}
	testenv.Eventually(t, 30*time.Second, "withdrawn route gone from GoBGP's adj-in", func() bool {
		return !g.adjIn(t, bgp.RF_IPv4_UC)["100.100.1.0/24"]
	})
	if want == ResultTimeout {
		// The command that timed out stays journaled as pending (exaBGP may
		// still apply it) until it is withdrawn.
		rep, err = routesCLI(t, l.bin, l.natsURL, "list")
		if err != nil || len(rep.Routes) != 2 || !strings.HasPrefix(rep.Routes[0].Body, "announce flow route") || rep.Routes[0].Pending ||
			!strings.Contains(rep.Routes[1].Body, "100.100.4.0/24") || !rep.Routes[1].Pending {
			t.Fatalf("list after withdraw: %v %+v", err, rep)
		}
		rep, err = routesCLI(t, l.bin, l.natsURL, "withdraw", "100.100.4.0/24", "--neighbor", g.addr)
		if err != nil || rep.Result != ResultDone {
			t.Fatalf("withdraw pending: %v %+v", err, rep)
		}
	}
	// A command exaBGP answered with an error was never journaled.
	rep, err = routesCLI(t, l.bin, l.natsURL, "list")
	if err != nil || len(rep.Routes) != 1 || !strings.HasPrefix(rep.Routes[0].Body, "announce flow route") {
		t.Fatalf("list after withdrawing the pending route: %v %+v", err, rep)
	}
	b, err := os.ReadFile(filepath.Join(l.dir, "exabgp", "routes.json"))
	if err != nil || strings.Contains(string(b), "100.100.1.0/24") || !strings.Contains(string(b), "203.0.113.9/32") {
		t.Fatalf("journal: %v %s", err, b)
	}
}

// TestExaBGPProcessKilled: the bgpedge process is killed while GoBGP streams
// routes. exaBGP respawns it and does not exit. The oracle for "nothing
// acknowledged is lost": exaBGP is frozen (SIGSTOP) so it cannot respawn the
// process, the process is killed, and the spool it leaves behind is read
// (every record it made durable, at least spooled_records_total as scraped
// just before the kill); after the respawn, a session flap and exaBGP's
// stop, those records must all still be there, seq by seq, byte for byte.
// The new process replays the journal (a route exaBGP never had reaches
// GoBGP only that way), and its route refresh on start makes GoBGP resend
// every route it had sent, including those in flight at the kill. After a
// full exaBGP restart the journaled route is announced again.
func TestExaBGPProcessKilled(t *testing.T) { forEachExaBGP(t, testProcessKilled) }

func testProcessKilled(t *testing.T, x labExaBGP) {
	const injected, lostByExaBGP = "100.100.9.0/24", "100.100.10.0/24"
	l := startLab(t, x, 10)
	g := l.g
	spoolDir := filepath.Join(l.dir, "exabgp", "spool")
	rep, err := routesCLI(t, l.bin, l.natsURL, "announce", injected, "--next-hop", "192.0.2.254", "--neighbor", g.addr)
	if err != nil || rep.Result != ResultDone {
		t.Fatalf("announce: %v %+v", err, rep)
	}

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent atomic.Int64
	wg.Add(1)
	go func() { // GoBGP streams routes until told to stop: route i is v4Prefix(i) with MED i, each prefix once
		defer wg.Done()
		nh, _ := bgp.NewPathAttributeNextHop(mustAddr("192.0.2.254"))
		for i := 0; ctx.Err() == nil && i < streamMax; i++ {
			nlri, _ := bgp.NewIPAddrPrefix(v4Prefix(i))
			p := mustPath(t, bgp.RF_IPv4_UC, nlri, false, bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeMultiExitDisc(uint32(i)), bgp.NewPathAttributeLocalPref(100))
			if _, err := g.s.AddPath(apiutilAdd(p)); err != nil {
				return
			}
			sent.Add(1)
		}
	}()
	defer func() { stop(); wg.Wait() }()

	testenv.Eventually(t, 60*time.Second, "first process spooling the stream", func() bool {
		return metric(l.metrics, "bgpedge_exabgp_spooled_records_total") > 200
	})
	old := l.e.childPID()
	if old == 0 {
		t.Fatal("no bgpedge child of exaBGP")
	}
	exa := l.e.cmd.Process.Pid
	if err := syscall.Kill(exa, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := l.e
	t.Cleanup(func() { // before exaBGP's own cleanup stops it
		if frozen.running() {
			_ = syscall.Kill(exa, syscall.SIGCONT)
		}
	})
	durable := metric(l.metrics, "bgpedge_exabgp_spooled_records_total") // acknowledged to the spool
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "killed process has let go of the spool", func() bool { return exited(old) })
	first := readSpool(t, spoolDir)
	if durable < 200 || float64(len(first)) < durable {
		t.Fatalf("spool of the killed process holds %d records, it reported %v durable", len(first), durable)
	}
	for i, r := range first {
		if r.Seq != uint64(i+1) {
			t.Fatalf("spool of the killed process: record %d has seq %d", i, r.Seq)
		}
	}
	streamed := checkStream(t, first)
	// A route the journal holds but exaBGP lost (as after an exaBGP crash):
	// only the new process's replay can bring it to GoBGP.
	addJournalCopy(t, filepath.Join(l.dir, "exabgp", "routes.json"), injected, lostByExaBGP)
	if err := syscall.Kill(exa, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	testenv.Eventually(t, 60*time.Second, "exaBGP respawned bgpedge", func() bool {
		pid := l.e.childPID()
		return pid != 0 && pid != old && metric(l.metrics, "bgpedge_exabgp_spool_available") == 1
	})
	testenv.Eventually(t, 30*time.Second, "new process replayed both journaled routes, acked done", func() bool {
		return metric(l.metrics, `bgpedge_exabgp_replayed_routes_total{result="done"}`) >= 2
	})
	testenv.Eventually(t, 30*time.Second, "replayed routes in GoBGP's adj-in from the exaBGP session", func() bool {
		in := g.adjIn(t, bgp.RF_IPv4_UC)
		return in[injected] && in[lostByExaBGP]
	})
	for _, res := range []string{ResultError, ResultTimeout} {
		if n := metric(l.metrics, `bgpedge_exabgp_replayed_routes_total{result="`+res+`"}`); n > 0 {
			t.Errorf("replays answered %s: %v", res, n)
		}
	}
	stop()
	wg.Wait()
	total := int(sent.Load())
	second := quiet(t, l.metrics) // the refresh's resend and the rest of the stream are durable
	if !l.e.running() || !g.established() {
		t.Fatal("exaBGP exited or the session dropped after the process was killed")
	}

	// A session flap without a process restart: the state up replay announces
	// the journal again, scoped to the neighbor.
	replayed := metric(l.metrics, `bgpedge_exabgp_replayed_routes_total{result="done"}`)
	if err := g.shutdownPeer(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "state up replay after the session flap", func() bool {
		return metric(l.metrics, `bgpedge_exabgp_replayed_routes_total{result="done"}`) >= replayed+2 && g.established()
	})
	testenv.Eventually(t, 30*time.Second, "journaled routes back in GoBGP's adj-in after the flap", func() bool {
		in := g.adjIn(t, bgp.RF_IPv4_UC)
		return in[injected] && in[lostByExaBGP]
	})
	if exa != l.e.cmd.Process.Pid || !l.e.running() {
		t.Fatal("exaBGP exited")
	}

	// A full exaBGP restart: the session drops (GoBGP forgets the routes),
	// the new process announces them again from its journal.
	l.e.stop()
	testenv.Eventually(t, 30*time.Second, "route gone from GoBGP after exaBGP stopped", func() bool {
		return !g.adjIn(t, bgp.RF_IPv4_UC)[injected]
	})
	recs := readSpool(t, spoolDir)
	if len(recs) < len(first) {
		t.Fatalf("spool holds %d records, the killed process left %d", len(recs), len(first))
	}
	for i := range first {
		if !sameRecord(first[i], recs[i]) {
			t.Fatalf("acknowledged record seq %d lost or altered:\nbefore %+v\nafter  %+v", first[i].Seq, first[i], recs[i])
		}
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
	// Route refresh on start: every route GoBGP had sent, also those the
	// killed process never made durable, is in the new process's records
	// before the flap; the stream sends each prefix once, so a prefix the
	// killed process spooled reappears only through the refresh.
	if len(recs) < len(first)+second {
		t.Fatalf("spool holds %d records, want at least %d + %d", len(recs), len(first), second)
	}
	after := announcedPrefixes(t, recs[len(first):len(first)+second])
	var missing []string
	for i := range total {
		if p := v4Prefix(i).String(); !after[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("route refresh on start: %d of %d streamed routes not sent again after the respawn (%d spooled by the killed process), e.g. %v",
			len(missing), total, streamed, missing[:min(5, len(missing))])
	}
	t.Logf("GoBGP sent %d updates; killed process: %v records acknowledged, %d durable (%d stream updates); new process before the flap: %d records; %d records in all: %v",
		total, durable, len(first), streamed, second, len(recs), types)

	l.e = startExaBGP(t, l.exa, l.dir, exabgpConf(l.bin, l.yaml, g))
	testenv.Eventually(t, 60*time.Second, "injected route announced again after exaBGP restart", func() bool {
		return g.adjIn(t, bgp.RF_IPv4_UC)[injected]
	})
	l.e.stop()
	if after := readSpool(t, spoolDir); len(after) <= len(recs) || after[len(recs)].Seq != recs[len(recs)-1].Seq+1 {
		t.Fatalf("spool after restart: %d records (was %d)", len(after), len(recs))
	}
}

// streamMax bounds the kill test's stream so that v4Prefix stays unique.
const streamMax = 40000

// exited reports whether pid is gone or a zombie: its files, and so its
// spool lock, are closed either way.
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

func sameRecord(a, b record.Record) bool {
	return a.Seq == b.Seq && a.Kind == b.Kind && bytes.Equal(a.Key, b.Key) && a.Time.Equal(b.Time) && a.Source == b.Source && bytes.Equal(a.Payload, b.Payload)
}

// routeEvents are the route events of recs, in spool order.
func routeEvents(t testing.TB, recs []record.Record) []record.Event {
	t.Helper()
	enc := &Encoder{AgentID: "edge-test"}
	var out []record.Event
	for _, r := range recs {
		err := enc.Encode(r, outputs(func(stream string, _, v []byte) {
			if stream != StreamRoute {
				return
			}
			var ev record.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				t.Fatalf("bad event %s: %v", v, err)
			}
			if ev.Route != nil {
				out = append(out, ev)
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// checkStream checks the killed process's records against what GoBGP sent:
// announces of v4Prefix(MED), each once (GoBGP does not send them strictly
// in the order they were added). It returns how many there were.
func checkStream(t testing.TB, recs []record.Record) int {
	t.Helper()
	seen := map[uint32]bool{}
	for _, ev := range routeEvents(t, recs) {
		if ev.Route.Action != "announce" || ev.Route.MED == nil {
			continue
		}
		med := *ev.Route.MED
		if seen[med] || ev.Route.Prefix != v4Prefix(int(med)).String() {
			t.Fatalf("spooled stream altered: %s with MED %d (seen before: %v)", ev.Route.Prefix, med, seen[med])
		}
		seen[med] = true
	}
	if len(seen) == 0 {
		t.Fatal("killed process spooled no stream update")
	}
	return len(seen)
}

func announcedPrefixes(t testing.TB, recs []record.Record) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, ev := range routeEvents(t, recs) {
		if ev.Route.Action == "announce" {
			out[ev.Route.Prefix] = true
		}
	}
	return out
}

// addJournalCopy journals a copy of the entry for prefix from, for prefix to.
func addJournalCopy(t testing.TB, path, from, to string) {
	t.Helper()
	j, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range j.Entries() {
		if e.Request == nil || e.Request.Route == nil || e.Request.Route.Prefix != from {
			continue
		}
		req, route := *e.Request, *e.Request.Route
		route.Prefix, req.Route = to, &route
		e.Key = strings.Replace(e.Key, from, to, 1)
		e.Body = strings.Replace(e.Body, from, to, 1)
		e.Request = &req
		if err := j.Put(e); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no journal entry for %s", from)
}

// quiet waits until the process has read no event for 3 s and made every
// event it read durable; it returns how many it spooled. exaBGP gives no
// signal of its own for "everything received so far was written".
func quiet(t testing.TB, metrics string) int {
	t.Helper()
	last, since := -1.0, time.Now()
	var spooled float64
	testenv.Eventually(t, 90*time.Second, "events from exaBGP stopped and are all durable", func() bool {
		n := metric(metrics, `bgpedge_exabgp_lines_total{kind="event"}`)
		if n != last {
			last, since = n, time.Now()
			return false
		}
		spooled = metric(metrics, "bgpedge_exabgp_spooled_records_total")
		return time.Since(since) > 3*time.Second && metric(metrics, "bgpedge_exabgp_queue_lines") == 0 && spooled >= n
	})
	return int(spooled)
}
