package exabgp

// Helpers that run real components on loopback: GoBGP v4 in-process, Debian's
// exaBGP running the real bgpedge binary, an embedded nats-server, and the
// real spool (package buffer) to check what was made durable.

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/config/oc"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	gobgp "github.com/osrg/gobgp/v4/pkg/server"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/spooltest"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// bgpedgeBinary builds cmd/bgpedge once per test run: exaBGP `run`s it.
func bgpedgeBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bgpedge-exabgp-test-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "bgpedge")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/bgpedge")
		cmd.Dir = testenv.RepoRoot(t)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// labAddrs picks a /24 of loopback addresses unlikely to be used by another
// test running at the same time: .2 is GoBGP, .3 is exaBGP.
func labAddrs() (gobgpAddr, exaAddr string) {
	b := 100 + rand.IntN(150)
	c := 1 + rand.IntN(250)
	return fmt.Sprintf("127.%d.%d.2", b, c), fmt.Sprintf("127.%d.%d.3", b, c)
}

// gobgpPeer is an in-process GoBGP v4 server. GoBGP keeps route selection
// options in package globals (table.SelectionOptions, written by StartBgp),
// so two servers in one process race: the lab tests must not run in parallel.
type gobgpPeer struct {
	s       *gobgp.BgpServer
	addr    string
	port    int
	exaAddr string
}

// startGoBGP runs GoBGP AS 65001 on addr, passive towards exaBGP at exaAddr
// over iBGP (so next hops and LOCAL_PREF pass unchanged).
func startGoBGP(t testing.TB, addr, exaAddr string) *gobgpPeer {
	t.Helper()
	s := gobgp.NewBgpServer()
	go s.Serve()
	port := testenv.FreePorts(t, addr, 1)[0]
	ctx := context.Background()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: 65001, RouterId: addr, ListenPort: int32(port), ListenAddresses: []string{addr}}}); err != nil {
		t.Fatal(err)
	}
	n := &oc.Neighbor{
		Config:    oc.NeighborConfig{NeighborAddress: netip.MustParseAddr(exaAddr), PeerAs: 65001},
		Transport: oc.Transport{Config: oc.TransportConfig{PassiveMode: true, LocalAddress: netip.MustParseAddr(addr)}},
		Timers:    oc.Timers{Config: oc.TimersConfig{HoldTime: 30, KeepaliveInterval: 10, ConnectRetry: 1, IdleHoldTimeAfterReset: 1}},
	}
	for _, f := range []oc.AfiSafiType{oc.AFI_SAFI_TYPE_IPV4_UNICAST, oc.AFI_SAFI_TYPE_IPV6_UNICAST, oc.AFI_SAFI_TYPE_IPV4_FLOWSPEC} {
		n.AfiSafis = append(n.AfiSafis, oc.AfiSafi{Config: oc.AfiSafiConfig{AfiSafiName: f, Enabled: true}})
	}
	if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: oc.NewPeerFromConfigStruct(n)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.StopBgp(context.Background(), &api.StopBgpRequest{})
		s.Stop()
	})
	return &gobgpPeer{s: s, addr: addr, port: port, exaAddr: exaAddr}
}

func (g *gobgpPeer) established() bool {
	up := false
	_ = g.s.ListPeer(context.Background(), &api.ListPeerRequest{Address: g.exaAddr}, func(p *api.Peer) {
		up = p.GetState().GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED
	})
	return up
}

// adjIn lists the prefixes GoBGP received from exaBGP in family.
func (g *gobgpPeer) adjIn(t testing.TB, family bgp.Family) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := g.s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_ADJ_IN, Name: g.exaAddr, Family: family},
		func(prefix bgp.NLRI, _ []*apiutil.Path) { out[prefix.String()] = true })
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustPath(t testing.TB, fam bgp.Family, nlri bgp.NLRI, withdraw bool, attrs ...bgp.PathAttributeInterface) *apiutil.Path {
	t.Helper()
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs, Withdrawal: withdraw, Age: time.Now().Unix()}
}

// exaBGP runs Debian's exabgp with one neighbor (GoBGP) and one process
// (the bgpedge binary with the given YAML config).
type exaBGP struct {
	t       testing.TB
	dir     string
	cmd     *exec.Cmd
	logMu   sync.Mutex
	log     []string
	done    chan struct{}
	confArg string
}

const defaultAPI = `api {
        processes [ bgpedge ];
        neighbor-changes;
        receive {
            parsed;
            update;
            notification;
            open;
            keepalive;
            refresh;
        }
    }`

func exabgpConf(bin, yaml string, g *gobgpPeer) string {
	return exabgpConfAPI(bin, yaml, g, defaultAPI)
}

// exabgpConfAPI is exaBGP's configuration with a given api block.
func exabgpConfAPI(bin, yaml string, g *gobgpPeer, apiBlock string) string {
	return fmt.Sprintf(`process bgpedge {
    run %s exabgp --config %s;
    encoder json;
}

neighbor %s {
    router-id %s;
    local-address %s;
    local-as 65001;
    peer-as 65001;
    connect %d;
    hold-time 30;
    family {
        ipv4 unicast;
        ipv6 unicast;
        ipv4 flow;
    }
    capability {
        route-refresh;
    }
    %s
}
`, bin, yaml, g.addr, g.exaAddr, g.exaAddr, g.port, apiBlock)
}

// labExaBGP is one exaBGP the lab tests run against.
type labExaBGP struct{ version, bin string }

// debianExaBGP is Debian's exaBGP 4.2.
func debianExaBGP(t testing.TB) labExaBGP {
	return labExaBGP{"4.2", testenv.Binary(t, "exabgp", "exabgp")}
}

// forEachExaBGP runs fn against Debian's exaBGP 4.2 and against exaBGP 5.0
// from PyPI, each in its own subtest.
func forEachExaBGP(t *testing.T, fn func(t *testing.T, x labExaBGP)) {
	t.Run("exabgp-4.2", func(t *testing.T) { fn(t, debianExaBGP(t)) })
	t.Run("exabgp-5.0", func(t *testing.T) { fn(t, labExaBGP{"5.0", testenv.ExaBGP5(t)}) })
}

func startExaBGP(t testing.TB, x labExaBGP, dir, conf string, env ...string) *exaBGP {
	t.Helper()
	bin := x.bin
	confPath := filepath.Join(dir, "exabgp.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, confPath)
	cmd.Env = append(os.Environ(),
		"exabgp.daemon.user=root", "exabgp.daemon.daemonize=false", "exabgp.api.cli=false",
		"exabgp.log.destination=stdout", "exabgp.api.ack=true", "exabgp.api.respawn=true")
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &exaBGP{t: t, dir: dir, cmd: cmd, done: make(chan struct{}), confArg: confPath}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64*1024), 4<<20)
		for sc.Scan() {
			e.logMu.Lock()
			e.log = append(e.log, sc.Text())
			e.logMu.Unlock()
		}
		_ = cmd.Wait()
		close(e.done)
	}()
	t.Cleanup(func() {
		e.stop()
		if t.Failed() {
			t.Logf("exabgp output:\n%s", e.output())
		}
	})
	return e
}

func (e *exaBGP) output() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return strings.Join(e.log, "\n")
}

func (e *exaBGP) running() bool {
	select {
	case <-e.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM (exaBGP then tells its process: state down, shutdown,
// EOF) and waits; the process group gets SIGKILL if that takes too long.
func (e *exaBGP) stop() {
	if !e.running() {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-e.done
	}
	// The bgpedge child drains its queue after EOF; wait for it to let go of the spool.
	deadline := time.Now().Add(20 * time.Second)
	poll := time.NewTicker(20 * time.Millisecond) // the process group has no exit event to wait on
	defer poll.Stop()
	for time.Now().Before(deadline) && syscall.Kill(-e.cmd.Process.Pid, 0) == nil {
		<-poll.C
	}
}

// childPID is the pid of exaBGP's bgpedge process.
func (e *exaBGP) childPID() int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", e.cmd.Process.Pid, e.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmdline), "exabgp\x00--config") {
			return pid
		}
	}
	return 0
}

// labConfig writes the bgpedge YAML for the exabgp process.
func labConfig(t testing.TB, dir, metricsAddr string, extra string) string {
	t.Helper()
	y := fmt.Sprintf(`agent:
  id: edge-test
  state_dir: %s
log:
  level: info
forwarder:
  enabled: false
exabgp:
  state_dir: %s
  metrics_listen: %s
  refresh_on_start: true
  refresh_families: ["ipv4 unicast"]
%s`, dir, filepath.Join(dir, "exabgp"), metricsAddr, extra)
	p := filepath.Join(dir, "bgpedge.yaml")
	if err := os.WriteFile(p, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	spooltest.SeedAtOne(t, filepath.Join(dir, "exabgp", "spool"))
	return p
}

// metric scrapes one counter or gauge (without labels) from /metrics; -1 if unreachable.
func metric(addr, name string) float64 { return scrape(addr, name, false) }

// metricSum adds up every series of a metric family; -1 if unreachable.
func metricSum(addr, name string) float64 { return scrape(addr, name, true) }

func scrape(addr, name string, labelled bool) float64 {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && (f[0] == name || labelled && strings.HasPrefix(f[0], name+"{")) {
			v, _ := strconv.ParseFloat(f[1], 64)
			sum, found = sum+v, true
		}
	}
	if !found {
		return -1
	}
	return sum
}

// readSpool opens the spool read-only and returns every record in it.
func readSpool(t testing.TB, dir string) []record.Record {
	t.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatalf("open spool: %v", err)
	}
	defer sp.Close()
	var all []record.Record
	from := sp.FirstUnacked()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		recs, err := sp.Read(ctx, from, 4096)
		cancel()
		if err != nil || len(recs) == 0 {
			break
		}
		all = append(all, recs...)
		from = recs[len(recs)-1].Seq + 1
	}
	return all
}

// decodeAll runs every spooled record through the encoder.
func decodeAll(t testing.TB, recs []record.Record) (routes, peers, errs []string, byPrefix map[string][]record.Event, types map[string]int) {
	t.Helper()
	enc := &Encoder{AgentID: "edge-test"}
	byPrefix = map[string][]record.Event{}
	types = map[string]int{}
	for _, r := range recs {
		err := enc.Encode(r, outputs(func(stream string, _, v []byte) {
			var ev record.Event
			if err := jsonUnmarshal(v, &ev); err != nil {
				t.Fatalf("bad event %s: %v", v, err)
			}
			types[ev.Type]++
			switch stream {
			case StreamRoute:
				routes = append(routes, string(v))
				if ev.Route.Prefix != "" {
					byPrefix[ev.Route.Prefix] = append(byPrefix[ev.Route.Prefix], ev)
				}
			case StreamPeer:
				peers = append(peers, string(v))
			case StreamErrors:
				errs = append(errs, string(v))
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	return
}

func startNATS(t testing.TB) string {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

func apiutilAdd(p *apiutil.Path) apiutil.AddPathRequest {
	return apiutil.AddPathRequest{Paths: []*apiutil.Path{p}}
}

func apiutilDelete(p *apiutil.Path) apiutil.DeletePathRequest {
	return apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}}
}

func (g *gobgpPeer) shutdownPeer() error {
	return g.s.ResetPeer(context.Background(), &api.ResetPeerRequest{Address: g.exaAddr})
}

func (g *gobgpPeer) adjOutHas(t testing.TB, prefix string) bool {
	t.Helper()
	found := false
	err := g.s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_ADJ_OUT, Name: g.exaAddr, Family: bgp.RF_IPv4_UC},
		func(p bgp.NLRI, _ []*apiutil.Path) { found = found || p.String() == prefix })
	return err == nil && found
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func readFile(p string) ([]byte, error)  { return os.ReadFile(p) }
func writeFile(p string, b []byte) error { return os.WriteFile(p, b, 0o644) }

// TestMain removes the bgpedge binary built for the lab tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildPath != "" {
		_ = os.RemoveAll(filepath.Dir(buildPath))
	}
	os.Exit(code)
}
