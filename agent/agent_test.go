package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Fakes for the fast lifecycle tests; the integration tests below and in
// run_test.go use the real spool, listener and forwarder.

type fakeSpool struct{ closed atomic.Bool }

func (s *fakeSpool) Append(context.Context, ...record.Record) (uint64, error) { return 1, nil }
func (s *fakeSpool) Read(ctx context.Context, _ uint64, _ int) ([]record.Record, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (s *fakeSpool) AckThrough(uint64) error { return nil }
func (s *fakeSpool) FirstUnacked() uint64    { return 1 }
func (s *fakeSpool) Close() error            { s.closed.Store(true); return nil }

// fakeStation binds a real socket, so address conflicts between an old and
// a new listener are real.
type fakeStation struct {
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	closed bool
}

func (s *fakeStation) Start(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return nil
}

func (s *fakeStation) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

func (s *fakeStation) Close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.ln != nil {
		return s.ln.Close()
	}
	return nil
}

func (s *fakeStation) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

type fakeDrainer struct {
	running atomic.Int32
	stopped chan struct{}
}

func (d *fakeDrainer) Run(ctx context.Context) error {
	d.running.Add(1)
	defer d.running.Add(-1)
	<-ctx.Done()
	close(d.stopped)
	return nil
}
func (d *fakeDrainer) ActiveSink() string { return "kafka" }

type fakeParts struct {
	mu         sync.Mutex
	spool      *fakeSpool
	stations   []*fakeStation
	drainers   []*fakeDrainer
	spoolErr   error
	stationErr error
	fwdErr     error
}

func (p *fakeParts) builders() *Builders {
	return &Builders{
		OpenSpool: func(Config, *slog.Logger, prometheus.Registerer) (Spool, error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.spoolErr != nil {
				return nil, p.spoolErr
			}
			p.spool = &fakeSpool{}
			return p.spool, nil
		},
		NewStation: func(cfg Config, _ Spool, _ *bmp.SessionJournal, _ *slog.Logger, _ prometheus.Registerer) (station, error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.stationErr != nil {
				return nil, p.stationErr
			}
			s := &fakeStation{addr: cfg.BMP.Listen}
			p.stations = append(p.stations, s)
			return s, nil
		},
		NewForwarder: func(Config, Spool, *slog.Logger, prometheus.Registerer) (drainer, error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.fwdErr != nil {
				return nil, p.fwdErr
			}
			d := &fakeDrainer{stopped: make(chan struct{})}
			p.drainers = append(p.drainers, d)
			return d, nil
		},
	}
}

func (p *fakeParts) station(i int) *fakeStation {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i >= len(p.stations) {
		return nil
	}
	return p.stations[i]
}

func (p *fakeParts) count() (stations, drainers int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.stations), len(p.drainers)
}

func testConfig(t *testing.T) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Agent.ID = "test"
	cfg.Agent.StateDir = t.TempDir()
	cfg.Agent.ShutdownTimeout = 10 * time.Second
	cfg.Buffer.Dir = filepath.Join(t.TempDir(), "spool")
	cfg.BMP.Listen = "127.0.0.1:0"
	cfg.BMP.Encoding.StateDir = filepath.Join(cfg.Agent.StateDir, "bmp")
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Forwarder.Enabled = false
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// runFakeAgent builds an agent from cfg over fake parts and runs it until
// the test ends; level follows the log level the agent applies.
func runFakeAgent(t *testing.T, cfg Config) (a *Agent, parts *fakeParts, level *slog.LevelVar, stop func() error) {
	t.Helper()
	parts, level = &fakeParts{}, new(slog.LevelVar)
	a, err := New(Options{Config: cfg, Logger: testLogger(t), Level: level, Builders: parts.builders()})
	if err != nil {
		t.Fatal(err)
	}
	return a, parts, level, startAgent(t, a)
}

// startAgent runs a until the test ends and waits until it is ready.
func startAgent(t *testing.T, a *Agent) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("agent did not stop within 30s")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	testenv.Eventually(t, 10*time.Second, "agent ready", func() bool { return a.Status().Ready })
	return stop
}

func readyz(t *testing.T, addr string) (int, Status) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("decode /readyz: %v", err)
	}
	return resp.StatusCode, st
}

func TestApplyUnrelatedChangeKeepsListener(t *testing.T) {
	cfg := testConfig(t)
	cfg.Forwarder.Enabled = true
	a, parts, level, stop := runFakeAgent(t, cfg)

	next := a.Config()
	next.Log.Level = "debug"
	next.Forwarder.FailoverAfter = time.Minute
	if err := a.Apply(t.Context(), next); err != nil {
		t.Fatal(err)
	}
	if n, d := parts.count(); n != 1 || d != 2 {
		t.Fatalf("stations built %d (want 1: untouched), forwarders built %d (want 2)", n, d)
	}
	if parts.station(0).isClosed() {
		t.Fatal("an unrelated change closed the BMP listener")
	}
	testenv.Eventually(t, 5*time.Second, "old forwarder stopped, new one running", func() bool {
		parts.mu.Lock()
		defer parts.mu.Unlock()
		return parts.drainers[0].running.Load() == 0 && parts.drainers[1].running.Load() == 1
	})
	if level.Level() != slog.LevelDebug {
		t.Errorf("log level not applied: %v", level.Level())
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !parts.spool.closed.Load() || !parts.station(0).isClosed() {
		t.Fatal("shutdown did not close the spool and the listener")
	}
}

func TestApplyNewListenAddressBuildsBeforeStopping(t *testing.T) {
	a, parts, _, _ := runFakeAgent(t, testConfig(t))
	old := parts.station(0)

	// A busy address: the new listener cannot bind; the old one must survive.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	next := a.Config()
	next.BMP.Listen = busy.Addr().String()
	if err := a.Apply(t.Context(), next); err == nil {
		t.Fatal("Apply succeeded although the new address is taken")
	}
	if old.isClosed() {
		t.Fatal("a failed Apply closed the running listener")
	}
	if got := a.Config().BMP.Listen; got != "127.0.0.1:0" {
		t.Fatalf("failed Apply changed the configuration to %q", got)
	}
	if st := a.Status(); !st.Ready || st.LastReload == "" {
		t.Fatalf("after a failed reload: ready=%v last_reload_error=%q", st.Ready, st.LastReload)
	}

	next.BMP.Listen = "127.0.0.1:0"
	next.BMP.MaxSessions = 7 // same address: the old one goes first
	if err := a.Apply(t.Context(), next); err != nil {
		t.Fatal(err)
	}
	if !old.isClosed() {
		t.Fatal("the old listener was not closed")
	}
	if a.BMPAddr() == "" || a.BMPAddr() == old.Addr().String() {
		t.Fatalf("new listener address %q", a.BMPAddr())
	}
}

func TestApplyRejectsRestartOnlyChanges(t *testing.T) {
	a, parts, _, _ := runFakeAgent(t, testConfig(t))
	next := a.Config()
	next.Buffer.Dir = t.TempDir()
	if err := a.Apply(t.Context(), next); !errors.Is(err, ErrRestartRequired) {
		t.Fatalf("want ErrRestartRequired, got %v", err)
	}
	next = a.Config()
	next.Fleet.PollInterval = time.Hour // fleet stays disabled: nothing to restart
	if err := a.Apply(t.Context(), next); err != nil {
		t.Fatalf("edit of a disabled fleet section: %v", err)
	}
	next.Fleet.Enabled, next.Fleet.NATS.URL = true, "nats://127.0.0.1:1"
	if err := a.Apply(t.Context(), next); !errors.Is(err, ErrRestartRequired) || !strings.HasPrefix(err.Error(), "fleet:") {
		t.Fatalf("fleet enabled: want ErrRestartRequired naming fleet, got %v", err)
	}
	withFleet := testConfig(t)
	withFleet.Fleet.Enabled, withFleet.Fleet.NATS.URL = true, "nats://127.0.0.1:1" // the watcher is runAgent's, not started here
	f, _, _, _ := runFakeAgent(t, withFleet)
	next = f.Config()
	next.Agent.ID = "renamed"
	if err := f.Apply(t.Context(), next); !errors.Is(err, ErrRestartRequired) || !strings.HasPrefix(err.Error(), "agent.id") {
		t.Fatalf("agent.id change with fleet: want ErrRestartRequired naming agent.id, got %v", err)
	}
	bad := a.Config()
	bad.BMP.MaxSessions = 0
	if err := a.Apply(t.Context(), bad); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("want ErrInvalidConfig, got %v", err)
	}
	if n, _ := parts.count(); n != 1 {
		t.Fatalf("rejected changes built %d listeners", n)
	}
}

func TestApplyForwarderFailureKeepsOld(t *testing.T) {
	cfg := testConfig(t)
	cfg.Forwarder.Enabled = true
	a, parts, _, _ := runFakeAgent(t, cfg)
	running := func() int32 {
		parts.mu.Lock()
		defer parts.mu.Unlock()
		return parts.drainers[0].running.Load()
	}
	testenv.Eventually(t, 5*time.Second, "forwarder running", func() bool { return running() == 1 })
	parts.mu.Lock()
	parts.fwdErr = errors.New("cannot build")
	parts.mu.Unlock()
	next := a.Config()
	next.Forwarder.ReadBatch = 17
	if err := a.Apply(t.Context(), next); err == nil {
		t.Fatal("Apply succeeded with a failing forwarder build")
	}
	if running() != 1 {
		t.Fatal("the running forwarder was stopped by a failed Apply")
	}
	if got := a.Status().Sink; got != "kafka" {
		t.Fatalf("sink %q", got)
	}
}

func TestReadyzUnreadyWhileSpoolCannotOpen(t *testing.T) {
	parts := &fakeParts{spoolErr: fmt.Errorf("disk not mounted")}
	a, err := New(Options{Config: testConfig(t), Logger: testLogger(t), Builders: parts.builders()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 5*time.Second, "http up", func() bool { return a.HTTPAddr() != "" })
	testenv.Eventually(t, 5*time.Second, "spool error reported", func() bool {
		code, st := readyz(t, a.HTTPAddr())
		return code == http.StatusServiceUnavailable && strings.Contains(st.Spool, "disk not mounted")
	})
	resp, err := http.Get("http://" + a.HTTPAddr() + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz while unready: %v %v", resp, err)
	}
	resp.Body.Close()

	// The disk comes back: the agent retries and becomes ready.
	parts.mu.Lock()
	parts.spoolErr = nil
	parts.mu.Unlock()
	testenv.Eventually(t, 15*time.Second, "ready after the spool opens", func() bool {
		code, st := readyz(t, a.HTTPAddr())
		return code == http.StatusOK && st.Spool == "open" && st.Sink == "disabled"
	})
}

// TestReadyzUnreadyWithRealSpool uses the real buffer package: a spool
// directory that is a regular file cannot be opened.
func TestReadyzUnreadyWithRealSpool(t *testing.T) {
	cfg := testConfig(t)
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Buffer.Dir = notDir
	a, err := New(Options{Config: cfg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 5*time.Second, "http up", func() bool { return a.HTTPAddr() != "" })
	testenv.Eventually(t, 5*time.Second, "spool error on /readyz", func() bool {
		code, st := readyz(t, a.HTTPAddr())
		return code == http.StatusServiceUnavailable && strings.HasPrefix(st.Spool, "error:") && st.BMP == "not listening"
	})
}

// TestApplyRealForwarderSwap swaps the real forwarder, whose BMP encoder
// holds a state file only one instance may open: the new one must get it
// once the old one let go, not wait for it.
func TestApplyRealForwarderSwap(t *testing.T) {
	cfg := testConfig(t)
	cfg.Forwarder.Enabled = true
	cfg.Forwarder.Kafka.Brokers = []string{"127.0.0.1:1"} // nothing to send: never dialled successfully
	a, err := New(Options{Config: cfg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, a)
	for i := range 3 {
		next := a.Config()
		next.Forwarder.ReadBatch = 100 + i
		start := time.Now()
		if err := a.Apply(t.Context(), next); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
		if took := time.Since(start); took > 4*time.Second {
			t.Fatalf("apply %d took %v: waiting for the decoding state lock", i, took)
		}
		if !a.Status().Ready {
			t.Fatalf("not ready after apply %d: %+v", i, a.Status())
		}
	}
}

type failingPrepare struct{ fakeDrainer }

func (*failingPrepare) Prepare() error { return errors.New("state in use") }
func (*failingPrepare) Discard()       {}

func TestApplyForwarderPrepareFailureRestoresOld(t *testing.T) {
	parts := &fakeParts{}
	cfg := testConfig(t)
	cfg.Forwarder.Enabled = true
	b := parts.builders()
	build := b.NewForwarder
	var calls atomic.Int32
	b.NewForwarder = func(c Config, sp Spool, l *slog.Logger, r prometheus.Registerer) (drainer, error) {
		if calls.Add(1) == 2 { // the replacement
			return &failingPrepare{fakeDrainer{stopped: make(chan struct{})}}, nil
		}
		return build(c, sp, l, r)
	}
	a, err := New(Options{Config: cfg, Logger: testLogger(t), Builders: b})
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, a)
	next := a.Config()
	next.Forwarder.ReadBatch = 5
	if err := a.Apply(t.Context(), next); err == nil || !strings.Contains(err.Error(), "state in use") {
		t.Fatalf("want the prepare error, got %v", err)
	}
	if a.Config().Forwarder.ReadBatch == 5 {
		t.Fatal("configuration changed although the apply failed")
	}
	if st := a.Status(); !st.Ready || st.Sink != "kafka" {
		t.Fatalf("previous forwarder not restored: %+v", st)
	}
	if calls.Load() != 3 {
		t.Fatalf("forwarder builds %d, want 3 (old, failing new, restored old)", calls.Load())
	}
}

// TestStopWhileStartingIsNotReady: an agent stopped while its parts still
// fail to start never tells the service manager it is ready.
func TestStopWhileStartingIsNotReady(t *testing.T) {
	cfg := testConfig(t)
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Buffer.Dir = filepath.Join(blocker, "spool") // under a file: cannot be created
	var mu sync.Mutex
	var states []string
	a, err := New(Options{Config: cfg, Logger: testLogger(t), Notify: func(s string) {
		mu.Lock()
		states = append(states, s)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	testenv.Eventually(t, 10*time.Second, "a failed start attempt", func() bool {
		return testutil.ToFloat64(a.metrics.startFailures.WithLabelValues("spool")) >= 1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(states, "READY=1") {
		t.Fatalf("notified %v: READY=1 although nothing ever started", states)
	}
}
