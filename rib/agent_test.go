package rib_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/rib"
)

// BMP messages as a router sends them, for peers 192.0.2.<n> (global, IPv4,
// 4-octet AS), pre-policy or post-policy (L flag).

func bmpMsg(typ byte, body []byte) []byte {
	b := make([]byte, 6, 6+len(body))
	b[0] = 3
	binary.BigEndian.PutUint32(b[1:5], uint32(6+len(body)))
	b[5] = typ
	return append(b, body...)
}

func perPeer(n byte, post bool) []byte {
	h := make([]byte, 42)
	if post {
		h[1] = 0x40
	}
	copy(h[22:26], []byte{192, 0, 2, n})
	binary.BigEndian.PutUint32(h[26:30], 65000+uint32(n))
	copy(h[30:34], []byte{192, 0, 2, n})
	binary.BigEndian.PutUint32(h[34:38], 1700000000)
	return h
}

func bgpMsg(typ byte, body []byte) []byte {
	m := slices.Repeat([]byte{0xff}, 16)
	m = binary.BigEndian.AppendUint16(m, uint16(19+len(body)))
	m = append(m, typ)
	return append(m, body...)
}

func openMsg(as uint32, id byte, addPath bool) []byte {
	caps := []byte{1, 4, 0, 1, 0, 1, 65, 4}
	caps = binary.BigEndian.AppendUint32(caps, as)
	if addPath {
		caps = append(caps, 69, 4, 0, 1, 1, 3)
	}
	b := []byte{4}
	b = binary.BigEndian.AppendUint16(b, uint16(as))
	b = binary.BigEndian.AppendUint16(b, 90)
	b = append(b, 10, 0, 0, id)
	b = append(b, byte(len(caps)+2), 2, byte(len(caps)))
	return bgpMsg(1, append(b, caps...))
}

func initiationMsg() []byte { return bmpMsg(4, []byte{0, 2, 0, 4, 't', 'e', 's', 't'}) }

func peerUpMsg(n byte, addPath bool) []byte {
	b := perPeer(n, false)
	b = append(b, make([]byte, 12)...)
	b = append(b, 192, 0, 2, 254)
	b = binary.BigEndian.AppendUint16(b, 179)
	b = binary.BigEndian.AppendUint16(b, 40000+uint16(n))
	b = append(b, openMsg(64512, 254, addPath)...)
	b = append(b, openMsg(65000+uint32(n), n, addPath)...)
	return bmpMsg(3, b)
}

func peerDownMsg(n byte) []byte { return bmpMsg(2, append(perPeer(n, false), 4)) }

type testRoute struct {
	peer   byte
	post   bool
	prefix netip.Prefix
	pathID uint32
}

func nlri(b []byte, r testRoute, addPath bool) []byte {
	if addPath {
		b = binary.BigEndian.AppendUint32(b, r.pathID)
	}
	bits := r.prefix.Bits()
	a := r.prefix.Addr().As4()
	b = append(b, byte(bits))
	return append(b, a[:(bits+7)/8]...)
}

// updateMsg is a Route Monitoring message withdrawing or announcing (with
// MED med) routes of one peer and table.
func updateMsg(routes []testRoute, withdraw bool, med uint32, addPath bool) []byte {
	var wd, ann []byte
	for _, r := range routes {
		if withdraw {
			wd = nlri(wd, r, addPath)
		} else {
			ann = nlri(ann, r, addPath)
		}
	}
	var attrs []byte
	if !withdraw {
		attrs = append(attrs, 0x40, 1, 1, 0)    // ORIGIN igp
		attrs = append(attrs, 0x40, 2, 6, 2, 1) // AS_PATH, one 4-byte ASN
		attrs = binary.BigEndian.AppendUint32(attrs, 65000+uint32(routes[0].peer))
		attrs = append(attrs, 0x40, 3, 4, 192, 0, 2, routes[0].peer)          // NEXT_HOP
		attrs = binary.BigEndian.AppendUint32(append(attrs, 0x80, 4, 4), med) // MED
	}
	body := binary.BigEndian.AppendUint16(nil, uint16(len(wd)))
	body = append(body, wd...)
	body = binary.BigEndian.AppendUint16(body, uint16(len(attrs)))
	body = append(body, attrs...)
	body = append(body, ann...)
	return bmpMsg(0, append(perPeer(routes[0].peer, routes[0].post), bgpMsg(2, body)...))
}

// routerModel is what the router holds (per peer, its routes and MEDs)
// and what bgpedge's route state holds (stale routes included).
type routerModel struct {
	peers   []byte
	addPath map[byte]bool
	eor     map[byte]bool // the peer's router sends End-of-RIB after re-sending its table
	up      map[byte]bool
	table   map[testRoute]uint32 // the router's routes
	state   map[testRoute]uint32 // the route state's routes
	// unsure: stale routes of a peer without End-of-RIB that the router
	// dropped; the timer withdraws them at a moment the test does not know,
	// so re-announcing one may or may not be a change.
	unsure map[testRoute]bool
	// changes counts, per route and MED, the announcements that change the
	// state: each must reach the route streams.
	changes map[string]int
}

func (m *routerModel) key(r testRoute) string {
	table := "adj-rib-in-pre"
	if r.post {
		table = "adj-rib-in-post"
	}
	return fmt.Sprintf("127.0.0.1||192.0.2.%d||%s|%s|ipv4-unicast|%d", r.peer, r.prefix, table, r.pathID)
}

func (m *routerModel) announce(r testRoute, med uint32) {
	if cur, ok := m.state[r]; (!ok || cur != med) && !m.unsure[r] {
		m.changes[fmt.Sprintf("%s=%d", m.key(r), med)]++
	}
	delete(m.unsure, r)
	m.table[r], m.state[r] = med, med
}

// peerDown is a Peer Down: the peer's routes are gone everywhere.
func (m *routerModel) peerDown(p byte) {
	for r := range m.table {
		if r.peer == p {
			delete(m.table, r)
			delete(m.state, r)
		}
	}
	for r := range m.unsure {
		if r.peer == p {
			delete(m.unsure, r)
		}
	}
	m.up[p] = false
}

// restart is the router reconnecting after bgpedge's crash (whose restart
// made the peers' routes stale): per peer a Peer Up, its table re-sent with
// some routes gone and some MEDs changed, and End-of-RIB for both tables
// where the peer sends it.
func (m *routerModel) restart(rng *rand.Rand) [][]byte {
	var out [][]byte
	for _, p := range m.peers {
		out = append(out, peerUpMsg(p, m.addPath[p]))
		m.up[p] = true
		var mine []testRoute
		for r := range m.table {
			if r.peer == p {
				mine = append(mine, r)
			}
		}
		slices.SortFunc(mine, func(a, b testRoute) int { return strings.Compare(m.key(a), m.key(b)) })
		for _, r := range mine {
			switch x := rng.IntN(10); {
			case x < 2: // gone while bgpedge was away
				delete(m.table, r)
				if m.eor[p] {
					delete(m.state, r) // withdrawn at End-of-RIB
				} else {
					delete(m.state, r)
					m.unsure[r] = true
				}
				continue
			case x < 4:
				m.table[r] = (m.table[r] + 1) % 3
			}
			m.announce(r, m.table[r])
			out = append(out, updateMsg([]testRoute{r}, false, m.table[r], m.addPath[p]))
		}
		if m.eor[p] {
			for _, post := range []bool{false, true} {
				out = append(out, bmpMsg(0, append(perPeer(p, post), bgpMsg(2, []byte{0, 0, 0, 0})...)))
			}
		}
	}
	return out
}

// ops generates n random messages from the model's current state, applying
// them to it.
func (m *routerModel) ops(rng *rand.Rand, n int) [][]byte {
	var out [][]byte
	for len(out) < n {
		p := m.peers[rng.IntN(len(m.peers))]
		if !m.up[p] {
			out = append(out, peerUpMsg(p, m.addPath[p]))
			m.up[p] = true
			continue
		}
		switch x := rng.IntN(100); {
		case x < 2:
			out = append(out, peerDownMsg(p))
			m.peerDown(p)
		case x < 75: // announce or change up to 3 routes with one MED
			med := uint32(rng.IntN(3))
			post := rng.IntN(2) == 0
			var rs []testRoute
			seen := map[testRoute]bool{}
			for range 1 + rng.IntN(3) {
				r := testRoute{peer: p, post: post, prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(8)), 0}), 24)}
				if m.addPath[p] {
					r.pathID = uint32(1 + rng.IntN(2))
				}
				if !seen[r] {
					seen[r] = true
					rs = append(rs, r)
				}
			}
			for _, r := range rs {
				m.announce(r, med)
			}
			out = append(out, updateMsg(rs, false, med, m.addPath[p]))
		default: // withdraw one held route of this peer
			var held []testRoute
			for r := range m.table {
				if r.peer == p {
					held = append(held, r)
				}
			}
			if len(held) == 0 {
				continue
			}
			slices.SortFunc(held, func(a, b testRoute) int { return strings.Compare(m.key(a), m.key(b)) })
			r := held[rng.IntN(len(held))]
			delete(m.table, r)
			delete(m.state, r)
			out = append(out, updateMsg([]testRoute{r}, true, 0, m.addPath[p]))
		}
	}
	return out
}

// ribAgent is `bgpedge run` with the route state on, forwarding to the
// test broker under a topic prefix of its own.
type ribAgent struct {
	brokers          []string
	bin, dir, prefix string
	bmpAddr          string
	run              *testenv.AgentRun
}

// startRIBAgent writes the configuration (bmp.rib.stale_timeout, forwarder lines added by
// forwarderYAML, indented under forwarder:) and returns the agent, not yet
// started. Its topics are deleted when the test ends.
func startRIBAgent(t *testing.T, staleTimeout, forwarderYAML string) *ribAgent {
	t.Helper()
	a := &ribAgent{brokers: testenv.KafkaBrokers(t), bin: testenv.BuildBgpedge(t), dir: t.TempDir()}
	a.prefix = fmt.Sprintf("test.%s.%d.", t.Name(), time.Now().UnixNano())
	t.Cleanup(func() {
		if admin, err := sarama.NewClusterAdmin(a.brokers, testenv.SaramaConfig(t)); err == nil {
			for _, s := range []string{"bmp.rib", "bmp.route.pre-policy", "bmp.route.post-policy", "bmp.route.loc-rib", "bmp.peer", "bmp.router", "bmp.errors", "bmp.stats", "bmp.raw", "bmp.mirror", "bmp.route.adj-rib-out", "dlq"} {
				_ = admin.DeleteTopic(a.prefix + s)
			}
			_ = admin.Close()
		}
	})
	a.bmpAddr = testenv.LoopbackAddr(t)
	config := filepath.Join(a.dir, "bgpedge.yaml")
	a.run = &testenv.AgentRun{T: t, Bin: a.bin, Args: []string{"run", "--config", config}, Dir: a.dir, HTTP: testenv.LoopbackAddr(t)}
	yaml := fmt.Sprintf(`agent:
  id: ribtest
  state_dir: %s
http:
  listen: %s
log:
  level: info
  format: text
buffer:
  dir: %s
bmp:
  listen: %s
  encoding:
    raw: false
    json: true
    state_dir: %s
  rib:
    enabled: true
    duplicates: drop
    stale_timeout: %s
forwarder:
  enabled: true%s
    brokers: [%s]
    partitions: 3
  topics:
    prefix: %s
    ensure: [bmp.route.pre-policy, bmp.route.post-policy]
`, filepath.Join(a.dir, "state"), a.run.HTTP, filepath.Join(a.dir, "spool"), a.bmpAddr, filepath.Join(a.dir, "bmpstate"), staleTimeout, forwarderYAML, strings.Join(a.brokers, ", "), a.prefix)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestRIBAgentKafka is the route state's model oracle against the real
// agent and broker: random announcements, attribute changes, withdraws,
// Add-Path paths and Peer Downs from one router with three peers (one with
// Add-Path), streamed in three runs of `bgpedge run` separated by kill -9
// while the forwarder is still delivering. Each restart makes the peers'
// routes stale (the session journal's synthetic peer-downs); the router
// reconnects and re-sends its table with some routes gone and some changed;
// two peers then send End-of-RIB, the third relies on bmp.rib.stale_timeout.
// At the end the compacted bmp.rib (last value per key) must be exactly the
// router's table, with its MEDs, and every announcement that changed the
// route state must be on the route streams.
func TestRIBAgentKafka(t *testing.T) {
	ag := startRIBAgent(t, "4s", `
  # Slow enough that a kill finds records delivered, in flight and unread.
  max_in_flight: 500
  kafka:
    flush_frequency: 100ms`)
	brokers, bin, dir, prefix, bmpAddr, run := ag.brokers, ag.bin, ag.dir, ag.prefix, ag.bmpAddr, ag.run
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 18))
	m := &routerModel{peers: []byte{1, 2, 3}, addPath: map[byte]bool{3: true}, eor: map[byte]bool{1: true, 3: true},
		up: map[byte]bool{}, table: map[testRoute]uint32{}, state: map[testRoute]uint32{}, unsure: map[testRoute]bool{}, changes: map[string]int{}}
	const runs, perRun = 3, 3000
	for k := range runs {
		run.Start()
		var restart [][]byte
		if k > 0 {
			// The journal's synthetic peer-downs, spooled at start, made
			// the peers' routes stale; the router comes back.
			restart = m.restart(rng)
		}
		conn, err := net.DialTimeout("tcp", bmpAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		msgs := append(append([][]byte{initiationMsg()}, restart...), m.ops(rng, perRun)...)
		var buf []byte
		for _, b := range msgs {
			buf = append(buf, b...)
		}
		if _, err := conn.Write(buf); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 2*time.Minute, fmt.Sprintf("run %d: %d messages spooled", k+1, len(msgs)), func() bool {
			n := 0.0
			for name, v := range run.Metrics() {
				if strings.HasPrefix(name, "bgpedge_bmp_messages_received_total") {
					n += v
				}
			}
			return int(n) == len(msgs)
		})
		if k < runs-1 {
			// Kill while the forwarder is part way: some records delivered
			// and committed, others in flight or not yet read.
			left := float64(len(msgs)) * (0.1 + 0.6*rng.Float64())
			backlog := 0.0
			testenv.Eventually(t, 2*time.Minute, fmt.Sprintf("run %d: fewer than %.0f records unacknowledged", k+1, left), func() bool {
				backlog = run.Metrics()["bgpedge_buffer_records"]
				return backlog < left
			})
			if backlog == 0 {
				t.Logf("run %d: the spool drained before the kill", k+1)
			}
			run.Kill()
			_ = conn.Close()
			t.Logf("run %d killed with %v records not yet acknowledged", k+1, backlog)
			continue
		}
		defer conn.Close()
	}
	testenv.Eventually(t, 2*time.Minute, "every record acknowledged and no route stale", func() bool {
		mets := run.Metrics()
		return mets["bgpedge_buffer_records"] == 0 && mets["bgpedge_rib_stale_routes"] == 0
	})
	mets := run.Metrics()
	t.Logf("routes held %v, duplicates dropped %v, synthetic withdraws %v", mets["bgpedge_rib_routes"],
		mets[`bgpedge_rib_duplicates_total{action="drop"}`], mets["bgpedge_rib_synthetic_withdraws_total"])
	if int(mets["bgpedge_rib_routes"]) != len(m.table) {
		t.Errorf("bgpedge_rib_routes %v, model %d", mets["bgpedge_rib_routes"], len(m.table))
	}

	type routeJSON struct {
		Peer  struct{ Address string } `json:"peer"`
		Route struct {
			Action string  `json:"action"`
			Prefix string  `json:"prefix"`
			PathID uint32  `json:"path_id"`
			MED    *uint32 `json:"med"`
			Policy string  `json:"policy"`
		} `json:"route"`
	}
	view := map[string]uint32{}
	testenv.ConsumeEach(t, brokers, prefix+"bmp.rib", time.Minute, func(msg *sarama.ConsumerMessage) {
		if msg.Value == nil {
			delete(view, string(msg.Key))
			return
		}
		var ev routeJSON
		if err := json.Unmarshal(msg.Value, &ev); err != nil || ev.Route.MED == nil {
			t.Fatalf("bmp.rib %s: %v %s", msg.Key, err, msg.Value)
		}
		view[string(msg.Key)] = *ev.Route.MED
	})
	want := map[string]uint32{}
	for r, med := range m.table {
		want[m.key(r)] = med
	}
	for k, med := range want {
		if got, ok := view[k]; !ok || got != med {
			t.Errorf("bmp.rib %s: got MED %d (present %v), model %d", k, got, ok, med)
		}
	}
	for k := range view {
		if _, ok := want[k]; !ok {
			t.Errorf("bmp.rib holds %s, which the model does not", k)
		}
	}
	seen := map[string]int{}
	for _, topic := range []string{"bmp.route.pre-policy", "bmp.route.post-policy"} {
		testenv.ConsumeEach(t, brokers, prefix+topic, time.Minute, func(msg *sarama.ConsumerMessage) {
			var ev routeJSON
			if err := json.Unmarshal(msg.Value, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Route.Action != "announce" || ev.Route.MED == nil {
				return
			}
			table := "adj-rib-in-" + strings.TrimSuffix(ev.Route.Policy, "-policy")
			seen[fmt.Sprintf("127.0.0.1||%s||%s|%s|ipv4-unicast|%d=%d", ev.Peer.Address, ev.Route.Prefix, table, ev.Route.PathID, *ev.Route.MED)]++
		})
	}
	missing := 0
	for k, n := range m.changes {
		if seen[k] < n {
			missing++
			if missing < 10 {
				t.Errorf("announcement %s: model expects %d on the route streams, got %d", k, n, seen[k])
			}
		}
	}
	t.Logf("%d routes in the model, %d in bmp.rib; %d distinct announcements expected, %d missing", len(want), len(view), len(m.changes), missing)

	// `bgpedge rib show` on the running agent, then on the stopped one
	// (whose stop leaves the routes stale, not gone).
	checkShow(t, bin, m, "--http", run.HTTP, "--state-dir", filepath.Join(dir, "nowhere"))
	run.Stop()
	checkShow(t, bin, m, "--http", testenv.LoopbackAddr(t), "--state-dir", filepath.Join(dir, "state"))
	// A clean stop keeps the index for the next start.
	if _, err := os.Stat(filepath.Join(dir, "state", rib.IndexMarkName)); err != nil {
		t.Errorf("the agent's stop left no index mark: %v", err)
	}
}

// checkShow runs `bgpedge rib show` and compares its counts, a prefix query
// (more-specifics) and an address query (longest match) with the model.
func checkShow(t *testing.T, bin string, m *routerModel, where ...string) {
	t.Helper()
	show := func(args ...string) rib.Report {
		cmd := exec.Command(bin, append(append([]string{"rib", "show", "--json"}, where...), args...)...)
		cmd.Env = testenv.ChildEnviron()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bgpedge rib show %v: %v\n%s", args, err, out)
		}
		var rep rib.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("rib show output: %v\n%s", err, out)
		}
		return rep
	}
	tableOf := func(r testRoute) string {
		if r.post {
			return rib.TableAdjInPost
		}
		return rib.TableAdjInPre
	}
	rep := show()
	wantCounts := map[string]uint64{}
	for r := range m.table {
		wantCounts[fmt.Sprintf("192.0.2.%d %s", r.peer, tableOf(r))]++
	}
	gotCounts := map[string]uint64{}
	for _, c := range rep.Counts {
		gotCounts[c.Peer+" "+c.Table] = c.Routes
	}
	if !maps.Equal(gotCounts, wantCounts) {
		t.Errorf("rib show (%s) counts %v, model %v", rep.Source, gotCounts, wantCounts)
	}
	rowKey := func(peer, table, prefix string, pathID uint32) string {
		return fmt.Sprintf("%s %s %s %d", peer, table, prefix, pathID)
	}
	for _, tc := range []struct {
		query string
		match func(p netip.Prefix) bool
		kind  string
	}{
		{"10.1.0.0/16", func(p netip.Prefix) bool { return p.Addr().As4()[1] == 1 }, "more-specific"},
		{"10.2.3.77", func(p netip.Prefix) bool { return p.Addr().As4()[1] == 2 && p.Addr().As4()[2] == 3 }, "longest-match"},
	} {
		want := map[string]bool{}
		for r := range m.table {
			if tc.match(r.prefix) {
				want[rowKey(fmt.Sprintf("192.0.2.%d", r.peer), tableOf(r), r.prefix.String(), r.pathID)] = true
			}
		}
		got := map[string]bool{}
		for _, r := range show("--prefix", tc.query).Routes {
			if r.Match != tc.kind {
				t.Errorf("rib show --prefix %s: %+v is a %s", tc.query, r, r.Match)
			}
			got[rowKey(r.Peer, r.Table, r.Prefix, r.PathID)] = true
		}
		if !maps.Equal(got, want) {
			t.Errorf("rib show (%s) --prefix %s: got %v, model %v", rep.Source, tc.query, got, want)
		}
	}
	t.Logf("rib show from %s: %d count rows", rep.Source, len(rep.Counts))
}
