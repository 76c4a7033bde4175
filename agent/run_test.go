package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// buildBinary compiles cmd/bgpedge once per test binary.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "bgpedge-agent-test-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "bgpedge")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Clean(filepath.Join(filepath.Dir(file), ".."))
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/bgpedge")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// logLines collects a child's JSON log lines.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   strings.Builder
}

func (l *logLines) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		_ = json.Unmarshal(sc.Bytes(), &m)
		l.mu.Lock()
		l.raw.WriteString(sc.Text() + "\n")
		if m != nil {
			l.lines = append(l.lines, m)
		}
		l.mu.Unlock()
	}
}

func (l *logLines) find(msg, key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.lines {
		if m["msg"] == msg {
			if s, ok := m[key].(string); ok {
				return s
			}
		}
	}
	return ""
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raw.String()
}

// child is a `bgpedge run` process started by a test.
type child struct {
	cmd      *exec.Cmd
	logs     *logLines
	exited   chan error
	httpAddr string
	bmpAddr  string
	spoolDir string
}

// startChild runs `bgpedge run --config configFile` with the spool and state
// in a temporary directory and ephemeral ports, and waits until it is ready.
func startChild(t *testing.T, configFile string, env ...string) *child {
	t.Helper()
	c := launchChild(t, configFile, env...)
	st := c.waitReady(t)
	if st.Spool != "open" {
		t.Fatalf("unexpected status %+v", st)
	}
	c.bmpAddr = strings.TrimPrefix(st.BMP, "listening on ")
	return c
}

// launchChild is startChild without waiting for more than the HTTP server.
func launchChild(t *testing.T, configFile string, env ...string) *child {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	c := &child{logs: &logLines{}, exited: make(chan error, 1), spoolDir: filepath.Join(tmp, "spool")}
	c.cmd = exec.Command(bin, "run", "--config", configFile)
	c.cmd.Dir = tmp
	// These tests count what the spool keeps: the forwarder (the file sink
	// of configs/local.yaml) is off unless a test's environment turns it on.
	c.cmd.Env = append(append([]string{"BGPEDGE_FORWARDER_ENABLED=false"}, os.Environ()...),
		"BGPEDGE_BUFFER_DIR="+c.spoolDir,
		"BGPEDGE_AGENT_STATE_DIR="+filepath.Join(tmp, "state"),
		"BGPEDGE_BMP_LISTEN=127.0.0.1:0",
		"BGPEDGE_HTTP_LISTEN=127.0.0.1:0",
		"BGPEDGE_LOG_FORMAT=json",
	)
	c.cmd.Env = append(c.cmd.Env, env...)
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	consumed := make(chan struct{})
	go func() { c.logs.consume(stderr); close(consumed) }()
	go func() { <-consumed; c.exited <- c.cmd.Wait() }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent log:\n%s", c.logs)
		}
	})
	testenv.Eventually(t, 20*time.Second, "http server address in the log", func() bool {
		c.httpAddr = c.logs.find("http server started", "addr")
		return c.httpAddr != ""
	})
	return c
}

func (c *child) waitReady(t *testing.T) Status {
	t.Helper()
	var st Status
	testenv.Eventually(t, 20*time.Second, "/readyz 200", func() bool {
		resp, err := http.Get("http://" + c.httpAddr + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		st = Status{}
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return resp.StatusCode == http.StatusOK
	})
	return st
}

// stop sends SIGTERM and requires a clean exit.
func (c *child) stop(t *testing.T) {
	t.Helper()
	testenv.Terminate(t, c.cmd.Process, c.exited, "bgpedge run")
	if !strings.Contains(c.logs.String(), `"agent stopped"`) {
		t.Error("no clean-stop log line")
	}
}

// spooledBMP counts the BMP records in a stopped child's spool.
func (c *child) spooledBMP(t *testing.T) uint64 {
	t.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: c.spoolDir})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	var got uint64
	from := uint64(1)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		recs, err := sp.Read(ctx, from, 4096)
		cancel()
		if err != nil || len(recs) == 0 {
			return got
		}
		for _, r := range recs {
			if r.Kind == record.KindBMP {
				got++
			}
		}
		from = recs[len(recs)-1].Seq + 1
	}
}

// TestRunLocalConfigEndToEnd is the README's first command: `bgpedge run
// --config configs/local.yaml` on a machine without Kafka starts, accepts
// BMP sessions, spools every message, and stops cleanly on SIGTERM.
func TestRunLocalConfigEndToEnd(t *testing.T) {
	capture := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10.0-loopback.bmp")
	// Play systemd's part for Type=notify: the agent must say READY=1 once
	// it serves, and STOPPING=1 on SIGTERM.
	sock := filepath.Join(t.TempDir(), "notify.sock")
	notifyConn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notifyConn.Close()
	notes := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := notifyConn.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	c := startChild(t, filepath.Join(testenv.RepoRoot(t), "configs", "local.yaml"), "NOTIFY_SOCKET="+sock)
	if st := c.waitReady(t); st.Sink != "disabled" || st.AgentID != "local" {
		t.Fatalf("unexpected status %+v", st)
	}
	select {
	case n := <-notes:
		if n != "READY=1" {
			t.Fatalf("first sd_notify message %q, want READY=1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no READY=1 on NOTIFY_SOCKET")
	}

	streams, err := bmp.LoadReplayFile(capture)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := bmp.Replay(t.Context(), bmp.ReplayOptions{Streams: streams, Target: c.bmpAddr, Sessions: 3, DrainTimeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if stats.Messages == 0 {
		t.Fatal("the capture replayed no messages")
	}
	testenv.Eventually(t, 10*time.Second, "bmp and buffer metrics in /metrics", func() bool {
		resp, err := http.Get("http://" + c.httpAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "bgpedge_bmp_") && strings.Contains(string(b), "bgpedge_buffer_")
	})
	c.stop(t)
	select {
	case n := <-notes:
		if n != "STOPPING=1" {
			t.Errorf("sd_notify on SIGTERM %q, want STOPPING=1", n)
		}
	case <-time.After(5 * time.Second):
		t.Error("no STOPPING=1 on NOTIFY_SOCKET")
	}

	// The oracle: every message replayed is in the spool.
	if got := c.spooledBMP(t); got != stats.Messages {
		t.Fatalf("spool holds %d BMP messages, replay sent %d", got, stats.Messages)
	}
	t.Logf("replayed %d messages over 3 sessions; all spooled; clean exit on SIGTERM", stats.Messages)
}

// splitBMP cuts a raw BMP stream into messages by their length fields.
func splitBMP(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 6 {
			t.Fatal("truncated capture")
		}
		n := int(b[1])<<24 | int(b[2])<<16 | int(b[3])<<8 | int(b[4])
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// TestRunReloadKeepsSessions: SIGHUP re-reads the file; an unrelated change
// (log level, pprof) applies without touching a live BMP session, and a bad
// file is rejected while the agent keeps running.
func TestRunReloadKeepsSessions(t *testing.T) {
	raw, err := os.ReadFile(testenv.Shared(t, "bmpdata", "raw", "juniper-mx204-junos24__daisy-19.bmp"))
	if err != nil {
		t.Fatal(err)
	}
	msgs := splitBMP(t, raw)
	local, conf := localConfigCopy(t)
	c := startChild(t, conf)

	conn, err := net.Dial("tcp", c.bmpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	half := len(msgs) / 2
	for _, m := range msgs[:half] {
		if _, err := conn.Write(m); err != nil {
			t.Fatal(err)
		}
	}

	reloads := func(msg string) int {
		c.logs.mu.Lock()
		defer c.logs.mu.Unlock()
		n := 0
		for _, l := range c.logs.lines {
			if l["msg"] == msg {
				n++
			}
		}
		return n
	}
	// A bad file first: rejected, the agent keeps running.
	if err := os.WriteFile(conf, []byte("bmp:\n  nope: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "bad reload rejected", func() bool {
		return reloads("reload: configuration rejected, keeping the running one") == 1
	})
	// Then an unrelated change.
	changed := strings.Replace(string(local), "pprof: true", "pprof: false", 1)
	changed = strings.Replace(changed, "level: info", "level: debug", 1)
	if err := os.WriteFile(conf, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "reload applied", func() bool {
		return reloads("reload: configuration applied") == 1
	})
	resp, err := http.Get("http://" + c.httpAddr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("pprof still served after reload: %d", resp.StatusCode)
	}

	// The same session carries on.
	for _, m := range msgs[half:] {
		if _, err := conn.Write(m); err != nil {
			t.Fatalf("session broken by the reload: %v", err)
		}
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("waiting for the station to close the session: %v", err)
	}
	c.stop(t)
	if got := c.spooledBMP(t); got != uint64(len(msgs)) {
		t.Fatalf("spool holds %d BMP messages, sent %d on one session across two reloads", got, len(msgs))
	}
	if n := reloads("bmp listener started"); n != 1 {
		t.Errorf("the BMP listener was started %d times; an unrelated reload must not restart it", n)
	}
}

// localConfigCopy copies configs/local.yaml where a test may rewrite it and
// returns its bytes and the copy's path.
func localConfigCopy(t *testing.T) (local []byte, conf string) {
	t.Helper()
	local, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "configs", "local.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	conf = filepath.Join(t.TempDir(), "bgpedge.yaml")
	if err := os.WriteFile(conf, local, 0o600); err != nil {
		t.Fatal(err)
	}
	return local, conf
}

// TestRunReloadWhileStarting: a SIGHUP that arrives while a part still
// fails to start (here the BMP address is taken) is applied once the agent
// is ready, not dropped.
func TestRunReloadWhileStarting(t *testing.T) {
	local, conf := localConfigCopy(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	c := launchChild(t, conf, "BGPEDGE_BMP_LISTEN="+taken.Addr().String())
	testenv.Eventually(t, 10*time.Second, "start failing on the taken address", func() bool {
		return c.logs.find("agent not ready, retrying", "err") != ""
	})

	changed := strings.Replace(string(local), "pprof: true", "pprof: false", 1)
	if changed == string(local) {
		t.Fatal("configs/local.yaml no longer sets http.pprof: true")
	}
	if err := os.WriteFile(conf, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "reload deferred", func() bool {
		return strings.Contains(c.logs.String(), "reload deferred")
	})
	if strings.Contains(c.logs.String(), "reload: configuration applied") {
		t.Fatal("a reload was applied before the agent was ready")
	}
	_ = taken.Close()
	c.waitReady(t)
	testenv.Eventually(t, 20*time.Second, "deferred reload applied", func() bool {
		return strings.Contains(c.logs.String(), "reload: configuration applied")
	})
	resp, err := http.Get("http://" + c.httpAddr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("pprof still served after the deferred reload: %d", resp.StatusCode)
	}
	c.stop(t)
}

var (
	metricName = regexp.MustCompile(`^bgpedge_[a-z]+_[a-z0-9_]+$`)
	unitSuffix = regexp.MustCompile(`_(seconds|bytes|records|messages|sessions|segments)$`)
)

// TestMetricsLint wires the real spool, listener and forwarder and lints
// every metric they expose: Prometheus' own lint, plus bgpedge's naming
// rule bgpedge_<subsystem>_<name>_<unit>[_total].
func TestMetricsLint(t *testing.T) {
	cfg := testConfig(t)
	cfg.Forwarder.Enabled = true
	cfg.Forwarder.Kafka.Brokers = []string{"127.0.0.1:1"} // never reached: nothing to send
	// Every part that registers metrics is on: the file sink as the second
	// sink, the route state.
	cfg.Forwarder.Sinks = []string{"kafka", "file"}
	cfg.Forwarder.File.Dir = t.TempDir()
	cfg.BMP.RIB.Enabled = true
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a, err := New(Options{Config: cfg, Logger: testLogger(t), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, a)

	problems, err := testutil.GatherAndLint(a.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, err := a.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	subsystems := map[string]bool{}
	for _, mf := range mfs {
		name := mf.GetName()
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		if !metricName.MatchString(name) {
			t.Errorf("%s: does not match %s", name, metricName)
			continue
		}
		subsystems[strings.Split(name, "_")[1]] = true
		isCounter := mf.GetType().String() == "COUNTER"
		if isCounter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s (%s): counters and only counters end in _total", name, mf.GetType())
		}
		if typ := mf.GetType().String(); typ == "HISTOGRAM" || typ == "SUMMARY" {
			if !unitSuffix.MatchString(name) {
				t.Errorf("%s: a histogram needs a unit suffix (%s)", name, unitSuffix)
			}
		}
	}
	for _, s := range []string{"agent", "buffer", "bmp", "forwarder"} {
		if !subsystems[s] {
			t.Errorf("no bgpedge_%s_* metric exposed; is the part wired?", s)
		}
	}

	// The shipped dashboard only queries metrics that exist. Some label sets
	// appear with their first event (the forwarder's failed connects to the
	// unreachable broker above), so gather until they have.
	dash, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "docs", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dashboard metrics not exposed: %v", missing)
		}
	})
	testenv.Eventually(t, 20*time.Second, "every metric of docs/dashboard.json exposed", func() bool {
		mfs, err := a.Gatherer().Gather()
		if err != nil {
			return false
		}
		exposed := map[string]bool{}
		for _, mf := range mfs {
			exposed[mf.GetName()] = true
		}
		missing = missing[:0]
		for _, m := range regexp.MustCompile(`bgpedge_[a-z0-9_]+`).FindAllString(string(dash), -1) {
			if name := strings.TrimSuffix(m, "_bucket"); !exposed[name] {
				missing = append(missing, name)
			}
		}
		return len(missing) == 0
	})

	// Every metric docs/metrics.md lists without labels for these parts is
	// registered: a collector left out of its registration would otherwise
	// pass the name check of TestMetricsDocumented.
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	exposed := map[string]bool{}
	mfs, err = a.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		exposed[mf.GetName()] = true
	}
	for _, m := range regexp.MustCompile("(?m)^\\| `(bgpedge_(agent|buffer|bmp|forwarder)_[a-z0-9_]+)` \\| [a-z]+ \\|  \\|").FindAllStringSubmatch(string(doc), -1) {
		if !exposed[m[1]] {
			t.Errorf("%s is documented but not exposed by the running agent", m[1])
		}
	}
}

// TestRunForwardsToKafka runs the whole pipeline against the real broker:
// BMP in, spool, forwarder with the BMP encoder, Kafka out. Every message
// replayed is read back from the raw topic.
func TestRunForwardsToKafka(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	capture := testenv.Shared(t, "bmpdata", "raw", "frr-8.0.1-6wind__daisy-58.bmp")
	prefix := fmt.Sprintf("agenttest%d.", time.Now().UnixNano())
	t.Setenv("BGPEDGE_FORWARDER_ENABLED", "true")
	t.Setenv("BGPEDGE_FORWARDER_SINKS", "kafka")
	t.Setenv("BGPEDGE_FORWARDER_KAFKA_BROKERS", strings.Join(brokers, ","))
	t.Setenv("BGPEDGE_FORWARDER_TOPICS_PREFIX", prefix)
	t.Setenv("BGPEDGE_FORWARDER_KAFKA_PARTITIONS", "2")
	c := startChild(t, filepath.Join(testenv.RepoRoot(t), "configs", "local.yaml"))

	streams, err := bmp.LoadReplayFile(capture)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := bmp.Replay(t.Context(), bmp.ReplayOptions{Streams: streams, Target: c.bmpAddr, DrainTimeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	testenv.Eventually(t, 60*time.Second, "sink kafka on /readyz", func() bool { return c.waitReady(t).Sink == "kafka" })

	cfg := sarama.NewConfig()
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	topic := prefix + bmp.StreamRaw
	count := func() int64 {
		if err := client.RefreshMetadata(topic); err != nil {
			return 0
		}
		parts, err := client.Partitions(topic)
		if err != nil {
			return 0
		}
		var n int64
		for _, p := range parts {
			hi, err1 := client.GetOffset(topic, p, sarama.OffsetNewest)
			lo, err2 := client.GetOffset(topic, p, sarama.OffsetOldest)
			if err1 != nil || err2 != nil {
				return 0
			}
			n += hi - lo
		}
		return n
	}
	testenv.Eventually(t, 90*time.Second, "every replayed message in Kafka", func() bool { return count() >= int64(stats.Messages) })
	topic = prefix + bmp.StreamPeer
	testenv.Eventually(t, 30*time.Second, "decoded peer events in "+topic, func() bool { return count() > 0 })
	topic = prefix + bmp.StreamRaw
	c.stop(t)
	if n := count(); n != int64(stats.Messages) {
		// More would be duplicates, allowed by at-least-once but not expected on a clean run.
		t.Logf("topic %s holds %d messages for %d replayed", topic, n, stats.Messages)
	}
	t.Logf("%d BMP messages replayed, all in %s", stats.Messages, topic)
}
