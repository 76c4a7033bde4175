package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/atomicfile"
	"github.com/bgpedge/bgpedge/internal/natsconn"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func startNATS(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

func fleetKV(t *testing.T, url, name string) jetstream.KeyValue {
	t.Helper()
	return fleetKVWith(t, FleetConfig{NATS: natsconn.Config{URL: url}}, name)
}

// fleetKVWith opens a bucket with the connection settings of c.
func fleetKVWith(t *testing.T, c FleetConfig, name string) jetstream.KeyValue {
	t.Helper()
	kv, closeConn, err := (&fleetFlags{conn: c}).open(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeConn)
	return kv
}

func readStatus(t *testing.T, kv jetstream.KeyValue, agent string) FleetStatus {
	t.Helper()
	e, err := kv.Get(t.Context(), agent)
	if err != nil {
		return FleetStatus{}
	}
	var st FleetStatus
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func push(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(t.Context(), append([]string{"fleet", "push", "--nats", url}, args...), strings.NewReader(""), &out, &errOut)
	if code != 0 {
		return out.String(), errors.New(errOut.String())
	}
	return out.String(), nil
}

// fleetOnNATS starts an embedded NATS server and sets cfg up to take its
// central documents from there as agent id in group; it writes the local
// file the watcher merges documents over.
func fleetOnNATS(t *testing.T, cfg *Config, id, group string) (url, local string) {
	t.Helper()
	url = startNATS(t).ClientURL()
	cfg.Agent.ID = id
	cfg.Fleet = DefaultFleetConfig()
	cfg.Fleet.Enabled, cfg.Fleet.NATS.URL, cfg.Fleet.Group = true, url, group
	local = filepath.Join(t.TempDir(), "bgpedge.yaml")
	writeConfig(t, local, *cfg)
	return url, local
}

// watchFleet runs a fleet watcher for a, logging to log, until the test
// ends and returns the status and document buckets.
func watchFleet(t *testing.T, a *Agent, cfg Config, local string, log *slog.Logger) (status, docs jetstream.KeyValue) {
	t.Helper()
	w := &fleetWatcher{cfg: cfg.Fleet, agentID: cfg.Agent.ID, src: &configSource{opts: LoadOptions{File: local, FileRequired: true}},
		dir: cfg.Agent.StateDir, apply: a.Apply, log: log}
	startWatcher(t, w.run)
	return fleetKV(t, cfg.Fleet.NATS.URL, "bgpedge-fleet-status"), fleetKV(t, cfg.Fleet.NATS.URL, "bgpedge-fleet")
}

// TestFleetApplyKeepOldAndLastGood drives a running agent from a NATS KV
// bucket: group document, agent document overriding it, a bad document
// kept out (status failed, old configuration running), last-good on disk
// used at the next start while central is down.
func TestFleetApplyKeepOldAndLastGood(t *testing.T) {
	ns := startNATS(t)
	url := ns.ClientURL()
	dir := t.TempDir()
	local := filepath.Join(dir, "bgpedge.yaml")
	stateDir := filepath.Join(dir, "state")
	doc := "agent:\n  id: edge-1\n  state_dir: " + stateDir + "\nbuffer:\n  dir: " + filepath.Join(dir, "spool") +
		"\nbmp:\n  listen: 127.0.0.1:0\nhttp:\n  listen: \"\"\nforwarder:\n  enabled: false\n" +
		"fleet:\n  enabled: true\n  nats:\n    url: " + url + "\n  group: pop-a\n"
	if err := os.WriteFile(local, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	src := &configSource{opts: LoadOptions{File: local, FileRequired: true}}
	cfg, err := src.load()
	if err != nil {
		t.Fatal(err)
	}
	a, _, level, stopAgent := runFakeAgent(t, cfg)
	w := &fleetWatcher{cfg: cfg.Fleet, agentID: "edge-1", src: src, dir: stateDir, apply: a.Apply, log: testLogger(t)}
	stopWatcher := startWatcher(t, w.run)

	status := fleetKV(t, url, "bgpedge-fleet-status")
	docs := fleetKV(t, url, "bgpedge-fleet")
	writeDoc := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// 1. The group's document applies.
	out, err := push(t, url, "--group", "pop-a", "--file", writeDoc("group.yaml", "log:\n  level: debug\n"))
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	if !strings.Contains(out, "pushed group.pop-a revision") {
		t.Fatalf("push output %q", out)
	}
	testenv.Eventually(t, 10*time.Second, "group document applied", func() bool {
		st := readStatus(t, status, "edge-1")
		return st.State == FleetApplied && st.Key == "group.pop-a" && level.Level() == slog.LevelDebug
	})

	// 2. The agent's own document wins over the group's.
	if _, err := push(t, url, "--agent", "edge-1", "--file", writeDoc("agent.yaml", "log:\n  level: warn\nbmp:\n  max_sessions: 5\n")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "agent document applied", func() bool {
		st := readStatus(t, status, "edge-1")
		return st.State == FleetApplied && st.Key == "agent.edge-1" && a.Config().BMP.MaxSessions == 5
	})
	if level.Level() != slog.LevelWarn {
		t.Fatalf("level %v, want warn", level.Level())
	}
	good := readStatus(t, status, "edge-1")

	// 3. push refuses a bad document before sending it…
	if _, err := push(t, url, "--agent", "edge-1", "--file", writeDoc("bad.yaml", "bmp:\n  nope: 1\n")); err == nil || !strings.Contains(err.Error(), "bmp.nope: unknown key") {
		t.Fatalf("push of a bad document: %v", err)
	}
	// …and a stale compare-and-set revision.
	if _, err := push(t, url, "--agent", "edge-1", "--revision", "1", "--file", writeDoc("stale.yaml", "log:\n  level: info\n")); err == nil || !strings.Contains(err.Error(), "revision conflict") {
		t.Fatalf("push on a stale revision: %v", err)
	}
	// 4. A bad document written around push: status failed, old config kept.
	if _, err := docs.Put(t.Context(), "agent.edge-1", []byte("bmp:\n  max_sessions: 0\n")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "bad document reported failed", func() bool {
		st := readStatus(t, status, "edge-1")
		return st.State == FleetFailed && strings.Contains(st.Error, "bmp.max_sessions")
	})
	if a.Config().BMP.MaxSessions != 5 || !a.Status().Ready {
		t.Fatal("a failed document changed the running agent")
	}

	// 5. The last good document is on disk, matching what was applied.
	d, ok, err := lastGoodStore(stateDir).load()
	if err != nil || !ok {
		t.Fatalf("last-good: %v %v", ok, err)
	}
	if d.SHA256 != good.SHA256 || d.Key != "agent.edge-1" || !strings.Contains(string(d.Value), "max_sessions: 5") {
		t.Fatalf("last-good %+v, applied %+v", d, good)
	}

	// 6. Central down: a new start uses the last-good document.
	stopWatcher()
	if err := stopAgent(); err != nil {
		t.Fatal(err)
	}
	ns.Shutdown()
	logs := &testenv.LogBuffer{}
	started := make(chan *Agent, 1)
	runCtx, stopRun := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	src2 := &configSource{opts: LoadOptions{File: local, FileRequired: true}}
	cfg2, err := src2.load()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		runDone <- runAgent(runCtx, cfg2, src2, logs, func(a *Agent) { started <- a })
	}()
	a2 := <-started
	testenv.Eventually(t, 15*time.Second, "restarted agent ready", func() bool { return a2.Status().Ready })
	if got := a2.Config().BMP.MaxSessions; got != 5 {
		t.Fatalf("restart while central is down runs max_sessions %d, want 5 from the last-good document", got)
	}
	if !strings.Contains(logs.String(), "fleet: starting from the last-good document") {
		t.Fatalf("no last-good log line:\n%s", logs.String())
	}
	stopRun()
	if err := <-runDone; err != nil {
		t.Fatalf("run: %v", err)
	}
}

// TestFleetNATSDeleteReverts: when central deletes the only document that
// applies to an agent, the agent returns to its local configuration.
func TestFleetNATSDeleteReverts(t *testing.T) {
	cfg := testConfig(t)
	_, local := fleetOnNATS(t, &cfg, "edge-2", "pop-c")
	a, _, level, _ := runFakeAgent(t, cfg)
	localLevel := level.Level()
	status, docs := watchFleet(t, a, cfg, local, testLogger(t))
	if _, err := docs.Put(t.Context(), "group.pop-c", []byte("log:\n  level: error\n")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "group document applied", func() bool {
		st := readStatus(t, status, "edge-2")
		return st.State == FleetApplied && st.Key == "group.pop-c" && level.Level() == slog.LevelError
	})
	if err := docs.Delete(t.Context(), "group.pop-c"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "reverted to the local configuration", func() bool {
		st := readStatus(t, status, "edge-2")
		return st.State == FleetApplied && st.Key == "" && level.Level() == localLevel
	})
	if _, ok, err := lastGoodStore(cfg.Agent.StateDir).load(); ok || err != nil {
		t.Fatalf("last-good document after the revert: ok=%v err=%v", ok, err)
	}
}

func TestFleetDocumentMustNotChangeFleet(t *testing.T) {
	err := checkFleetDoc([]byte("fleet:\n  enabled: false\n"))
	if !errors.Is(err, ErrFleetSection) {
		t.Fatalf("want ErrFleetSection, got %v", err)
	}
	if err := checkFleetDoc([]byte("log:\n  level: debug\n")); err != nil {
		t.Fatal(err)
	}
}

// TestFleetHTTPPollWithETag serves documents over real HTTP: the agent's
// document wins over the group's, unchanged documents cost a 304, and the
// status comes back with PUT.
func TestFleetHTTPPollWithETag(t *testing.T) {
	var (
		mu          sync.Mutex
		docs        = map[string]string{"/group/pop-b.yaml": "log:\n  level: debug\n"}
		notModified int
		statuses    []FleetStatus
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == http.MethodPut && r.URL.Path == "/status/edge-9.json" {
			var st FleetStatus
			if err := json.NewDecoder(r.Body).Decode(&st); err == nil {
				statuses = append(statuses, st)
			}
			return
		}
		doc, ok := docs[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		etag := `"` + newFleetDoc("", 0, []byte(doc)).SHA256[:16] + `"`
		if r.Header.Get("If-None-Match") == etag {
			notModified++
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		w.Header().Set("X-Bgpedge-Revision", "7")
		_, _ = w.Write([]byte(doc))
	}))
	defer srv.Close()
	last := func() FleetStatus {
		mu.Lock()
		defer mu.Unlock()
		if len(statuses) == 0 {
			return FleetStatus{}
		}
		return statuses[len(statuses)-1]
	}

	cfg := testConfig(t)
	cfg.Agent.ID = "edge-9"
	local := filepath.Join(t.TempDir(), "bgpedge.yaml")
	writeConfig(t, local, cfg)
	a, _, level, stopFake := runFakeAgent(t, cfg)
	fc := FleetConfig{Enabled: true, HTTPURL: srv.URL, Group: "pop-b", PollInterval: 20 * time.Millisecond}
	w := &fleetWatcher{cfg: fc, agentID: "edge-9", src: &configSource{opts: LoadOptions{File: local, FileRequired: true}},
		dir: cfg.Agent.StateDir, apply: a.Apply, log: testLogger(t)}
	stopWatcher := startWatcher(t, w.poll)

	testenv.Eventually(t, 10*time.Second, "group document applied", func() bool {
		st := last()
		return st.State == FleetApplied && st.Key == "group.pop-b" && st.Revision == 7 && level.Level() == slog.LevelDebug
	})
	testenv.Eventually(t, 10*time.Second, "unchanged document answered 304", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return notModified > 0
	})
	mu.Lock()
	docs["/agent/edge-9.yaml"] = "log:\n  level: error\n"
	mu.Unlock()
	testenv.Eventually(t, 10*time.Second, "agent document wins", func() bool {
		st := last()
		return st.State == FleetApplied && st.Key == "agent.edge-9" && level.Level() == slog.LevelError
	})
	mu.Lock()
	docs["/agent/edge-9.yaml"] = "log:\n  level: nope\n"
	mu.Unlock()
	testenv.Eventually(t, 10*time.Second, "bad document failed", func() bool {
		st := last()
		return st.State == FleetFailed && strings.Contains(st.Error, "log.level")
	})
	if level.Level() != slog.LevelError {
		t.Fatal("a failed document changed the level")
	}

	// Both documents deleted: back to the local configuration, and no
	// last-good document left for the next start.
	mu.Lock()
	docs["/agent/edge-9.yaml"] = "log:\n  level: error\n" // applies again first
	mu.Unlock()
	testenv.Eventually(t, 10*time.Second, "good agent document applied again", func() bool {
		st := last()
		return st.State == FleetApplied && st.Key == "agent.edge-9"
	})
	// A restart-only document, then central goes back to the one that
	// runs: the next start must run that one, not the pending one.
	const restartDoc = "buffer:\n  max_bytes: 3GiB\n"
	setAgentDoc := func(doc string) {
		mu.Lock()
		docs["/agent/edge-9.yaml"] = doc
		mu.Unlock()
	}
	setAgentDoc(restartDoc)
	testenv.Eventually(t, 10*time.Second, "restart-only document pending", func() bool {
		st := last()
		return st.State == FleetPendingRestart && st.Key == "agent.edge-9" && strings.Contains(st.Error, "restart")
	})
	setAgentDoc("log:\n  level: error\n")
	testenv.Eventually(t, 10*time.Second, "running document reported applied again", func() bool {
		st := last()
		return st.State == FleetApplied && st.Key == "agent.edge-9"
	})
	if _, ok, err := pendingStore(cfg.Agent.StateDir).load(); ok || err != nil {
		t.Fatalf("the pending document outlived central going back: ok=%v err=%v", ok, err)
	}

	mu.Lock()
	delete(docs, "/agent/edge-9.yaml")
	delete(docs, "/group/pop-b.yaml")
	mu.Unlock()
	localLevel, err := parseLevel(cfg.Log.Level)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "reverted to the local configuration", func() bool {
		st := last()
		return st.State == FleetApplied && st.Key == "" && level.Level() == localLevel
	})
	if _, ok, err := lastGoodStore(cfg.Agent.StateDir).load(); ok || err != nil {
		t.Fatalf("last-good document after the revert: ok=%v err=%v", ok, err)
	}

	// A restart-only document the agent cannot start with (its spool
	// directory lies under a file): pending, saved for the next start, the
	// running agent unchanged.
	stateDir := cfg.Agent.StateDir
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	badDoc := "buffer:\n  dir: " + filepath.Join(notADir, "spool") + "\n"
	setAgentDoc(badDoc)
	testenv.Eventually(t, 10*time.Second, "restart-only document pending", func() bool {
		st := last()
		return st.State == FleetPendingRestart && st.Key == "agent.edge-9" && strings.Contains(st.Error, "restart")
	})
	if a.Config().Buffer.Dir == filepath.Join(notADir, "spool") {
		t.Fatal("a restart-only change was applied to the running agent")
	}
	if d, ok, err := pendingStore(stateDir).load(); !ok || err != nil || string(d.Value) != badDoc {
		t.Fatalf("pending document not saved for the next start: ok=%v err=%v value=%q", ok, err, d.Value)
	}
	if _, ok, _ := lastGoodStore(stateDir).load(); ok {
		t.Fatal("the pending document became last-good before it ran")
	}
	stopWatcher()
	if err := stopFake(); err != nil {
		t.Fatal(err)
	}

	// Restarts run bgpedge's own loop, with fleet on.
	cfg.Fleet = DefaultFleetConfig()
	cfg.Fleet.Enabled, cfg.Fleet.HTTPURL, cfg.Fleet.Group = true, srv.URL, "pop-b"
	cfg.Fleet.PollInterval = time.Second
	writeConfig(t, local, cfg)
	restart := func() (a *Agent, stop func()) {
		src := &configSource{opts: LoadOptions{File: local, FileRequired: true}}
		c, err := src.load()
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan *Agent, 1)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- runAgent(ctx, c, src, io.Discard, func(a *Agent) { started <- a }) }()
		return <-started, func() {
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("run: %v", err)
			}
		}
	}

	// 1. Two starts try the pending document and never get ready (the
	// service manager stops each after TimeoutStartSec; a stop during a
	// slow start looks the same). After the first the document is still
	// pending.
	for try := 1; try <= maxTrials; try++ {
		a1, stop1 := restart()
		testenv.Eventually(t, 15*time.Second, "start with the bad pending document keeps failing", func() bool {
			return testutil.ToFloat64(a1.metrics.startFailures.WithLabelValues("spool")) > 0
		})
		stop1()
		if got := trials(trialPath(stateDir)); got != try {
			t.Fatalf("after start %d the trial mark counts %d", try, got)
		}
		if _, ok, _ := pendingStore(stateDir).load(); !ok {
			t.Fatalf("the pending document is gone after start %d", try)
		}
	}

	// 2. The next start sets it aside, runs without it, and reports it
	// failed while central still publishes it.
	a2, stop2 := restart()
	testenv.Eventually(t, 15*time.Second, "ready without the set-aside document, reported failed", func() bool {
		st := last()
		return a2.Status().Ready && st.State == FleetFailed && st.Key == "agent.edge-9" && strings.Contains(st.Error, "did not get ready")
	})
	if got := a2.Config().Buffer.Dir; got != cfg.Buffer.Dir {
		t.Fatalf("buffer.dir %q, want the local %q", got, cfg.Buffer.Dir)
	}
	if _, ok, _ := pendingStore(stateDir).load(); ok {
		t.Fatal("the set-aside document is still pending")
	}

	// 3. A good restart-only document: pending, then run by the next start,
	// reported applied, and last-good once the agent is ready.
	setAgentDoc(restartDoc)
	testenv.Eventually(t, 10*time.Second, "good restart-only document pending", func() bool {
		st := last()
		return st.State == FleetPendingRestart && st.Key == "agent.edge-9"
	})
	if _, ok, _ := rejectedStore(stateDir).load(); ok {
		t.Fatal("the rejected document outlived a new one")
	}
	stop2()
	a3, stop3 := restart()
	defer stop3()
	testenv.Eventually(t, 15*time.Second, "restarted agent runs the pending document and reports it", func() bool {
		st := last()
		return a3.Status().Ready && a3.Config().Buffer.MaxBytes == 3<<30 && st.State == FleetApplied && st.Key == "agent.edge-9"
	})
	if d, ok, err := lastGoodStore(stateDir).load(); !ok || err != nil || string(d.Value) != restartDoc {
		t.Fatalf("last-good after the trial start: ok=%v err=%v value=%q", ok, err, d.Value)
	}
	if _, err := os.Stat(trialPath(stateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("trial mark left after the agent got ready: %v", err)
	}
}

// writeConfig writes cfg as the YAML file at path.
func writeConfig(t *testing.T, path string, cfg Config) {
	t.Helper()
	out, err := RenderYAML(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startWatcher runs a fleet watcher's loop until stop is called or the test
// ends.
func startWatcher(t *testing.T, run func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// TestFleetNotFoundIsNoDeletion: a server that never served this agent a
// document (a wrong URL, a proxy answering 404) does not make the agent
// drop the document it runs: only a document that disappears is deleted.
func TestFleetNotFoundIsNoDeletion(t *testing.T) {
	var mu sync.Mutex
	gets := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			mu.Lock()
			gets++
			mu.Unlock()
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	cfg := testConfig(t)
	local := filepath.Join(t.TempDir(), "bgpedge.yaml")
	writeConfig(t, local, cfg)
	doc := newFleetDoc("group.pop-d", 3, []byte("log:\n  level: error\n"))
	if err := lastGoodStore(cfg.Agent.StateDir).save(doc); err != nil {
		t.Fatal(err)
	}
	a, _, level, _ := runFakeAgent(t, cfg)
	fc := FleetConfig{Enabled: true, HTTPURL: srv.URL, Group: "pop-d", PollInterval: 10 * time.Millisecond}
	w := &fleetWatcher{cfg: fc, agentID: "edge-4", src: &configSource{opts: LoadOptions{File: local, FileRequired: true}},
		dir: cfg.Agent.StateDir, apply: a.Apply, log: testLogger(t)}
	started := w.startConfig(cfg)
	if err := a.Apply(t.Context(), started); err != nil {
		t.Fatal(err)
	}
	startWatcher(t, w.poll)
	testenv.Eventually(t, 10*time.Second, "ten polls answered 404", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return gets >= 20 // two keys per poll
	})
	if _, ok, err := lastGoodStore(cfg.Agent.StateDir).load(); !ok || err != nil {
		t.Fatalf("last-good dropped on 404s from a server that never served it: ok=%v err=%v", ok, err)
	}
	if level.Level() != slog.LevelError {
		t.Fatalf("level %v: the agent left the document it runs", level.Level())
	}
}

// TestFleetStateFiles checks the documents kept in agent.state_dir across
// the cases a running test cannot easily reach.
func TestFleetStateFiles(t *testing.T) {
	cfg := testConfig(t)
	local := filepath.Join(t.TempDir(), "bgpedge.yaml")
	writeConfig(t, local, cfg)
	dir := cfg.Agent.StateDir
	newWatcher := func(apply func(context.Context, Config) error) *fleetWatcher {
		return &fleetWatcher{agentID: "edge-5", src: &configSource{opts: LoadOptions{File: local, FileRequired: true}}, dir: dir, apply: apply, log: testLogger(t)}
	}
	docA := newFleetDoc("agent.edge-5", 4, []byte("bmp:\n  max_sessions: 7\n"))
	docB := newFleetDoc("agent.edge-5", 5, []byte("bmp:\n  max_sessions: 9\n"))
	noReport := func(FleetDoc, string, error) {}

	// A crash inside ready(): the trial document is last-good already, the
	// pending copy and the mark are left. The next start runs it as
	// last-good and does not set it aside.
	for _, st := range []docStore{lastGoodStore(dir), pendingStore(dir)} {
		if err := st.save(docA); err != nil {
			t.Fatal(err)
		}
	}
	if err := atomicfile.Write(trialPath(dir), []byte("2")); err != nil {
		t.Fatal(err)
	}
	w := newWatcher(nil)
	if got := w.startConfig(cfg); got.BMP.MaxSessions != 7 || w.applied.SHA256 != docA.SHA256 || w.trying {
		t.Fatalf("start after a crash in ready(): max_sessions %d, applied %q, trying %v", got.BMP.MaxSessions, w.applied.Key, w.trying)
	}
	if _, ok, _ := rejectedStore(dir).load(); ok {
		t.Fatal("a document that ran was set aside")
	}
	if _, ok, _ := pendingStore(dir).load(); ok {
		t.Fatal("the promoted document is still pending")
	}

	// Central publishes what runs, after a revert that waited for a restart
	// removed the last-good document and with a rejected one on disk: what
	// runs is last-good again, and the rejected one goes.
	if err := lastGoodStore(dir).clear(); err != nil {
		t.Fatal(err)
	}
	if err := rejectedStore(dir).save(docB); err != nil {
		t.Fatal(err)
	}
	w.failed.doc, w.failed.state, w.failed.err = FleetDoc{}, FleetPendingRestart, ErrRestartRequired
	w.applyDoc(t.Context(), docA, noReport)
	if d, ok, _ := lastGoodStore(dir).load(); !ok || d.SHA256 != docA.SHA256 {
		t.Fatalf("last-good after central republished the running document: ok=%v key=%q", ok, d.Key)
	}
	if _, ok, _ := rejectedStore(dir).load(); ok {
		t.Fatal("the rejected document outlived central going back")
	}

	// A revert that fails keeps the last-good document, which still runs.
	w.apply = func(context.Context, Config) error { return errors.New("cannot apply") }
	var state string
	w.revert(t.Context(), func(_ FleetDoc, st string, _ error) { state = st })
	if d, ok, _ := lastGoodStore(dir).load(); !ok || d.SHA256 != docA.SHA256 || state != FleetFailed {
		t.Fatalf("after a failed revert: last-good ok=%v key=%q, state %q", ok, d.Key, state)
	}
}

// TestFleetNATSLostBucketIsNoDeletion: central losing its bucket (deleted
// and created again, empty) is not a deletion of the agent's document: the
// agent keeps running it, watches the new bucket, and takes what central
// publishes there.
func TestFleetNATSLostBucketIsNoDeletion(t *testing.T) {
	cfg := testConfig(t)
	url, local := fleetOnNATS(t, &cfg, "edge-5", "pop-e")
	a, _, level, _ := runFakeAgent(t, cfg)
	logs := &testenv.LogBuffer{}
	status, docs := watchFleet(t, a, cfg, local, slog.New(slog.NewTextHandler(logs, nil)))
	doc := []byte("log:\n  level: error\n")
	if _, err := docs.Put(t.Context(), "group.pop-e", doc); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "group document applied", func() bool {
		st := readStatus(t, status, "edge-5")
		return st.State == FleetApplied && st.Key == "group.pop-e" && level.Level() == slog.LevelError
	})
	applied := testutil.ToFloat64(a.metrics.applies.WithLabelValues("applied"))

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(t.Context(), "bgpedge-fleet"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testenv.Eventually(t, 30*time.Second, "agent watching the bucket again", func() bool {
		s, err := js.Stream(t.Context(), "KV_bgpedge-fleet")
		if err != nil {
			return false
		}
		info, err := s.Info(t.Context())
		return err == nil && info.State.Consumers > 0
	})
	t.Logf("agent watching again after %v", time.Since(start))
	if !strings.Contains(logs.String(), "the server ended the watch") {
		t.Errorf("the lost watch is not logged as such:\n%s", logs.String())
	}
	kv, err := js.KeyValue(t.Context(), "bgpedge-fleet")
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(a.metrics.applies.WithLabelValues("applied")); got != applied || level.Level() != slog.LevelError {
		t.Fatalf("%v applies since the bucket was lost (want none), level %v: the agent reverted", got-applied, level.Level())
	}
	if _, ok, err := lastGoodStore(cfg.Agent.StateDir).load(); !ok || err != nil {
		t.Fatalf("last-good dropped when the bucket was lost: ok=%v err=%v", ok, err)
	}
	if _, err := kv.Put(t.Context(), "group.pop-e", []byte("log:\n  level: warn\n")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "document in the new bucket applied", func() bool {
		st := readStatus(t, status, "edge-5")
		return st.State == FleetApplied && level.Level() == slog.LevelWarn
	})
	if got := testutil.ToFloat64(a.metrics.applies.WithLabelValues("applied")); got != applied+1 {
		t.Fatalf("%v applies since the bucket was lost, want 1: the new document alone", got-applied)
	}
}
