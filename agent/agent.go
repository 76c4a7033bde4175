package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/lograte"
	"github.com/bgpedge/bgpedge/pipeline"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	// ErrRestartRequired is returned by Apply for changes that cannot be made
	// to a running agent (the spool's directory and limits, the state dir).
	ErrRestartRequired = errors.New("change needs a restart")
	// ErrNotRunning is returned by Apply before Run has started the parts.
	ErrNotRunning = errors.New("agent is not running")
	// ErrDeliversLess is returned by Apply when new forwarder settings reach
	// a lesser sink than the running forwarder delivers to (see Reach).
	ErrDeliversLess = errors.New("new forwarder settings would deliver less")
)

// Spool is what the agent needs from the spool: the BMP listener appends to
// it and the forwarder drains it. *buffer.Spool implements it.
type Spool = pipeline.Spool

// station is the BMP listener as the agent drives it.
type station interface {
	Start(ctx context.Context) error
	Addr() net.Addr
	Close(ctx context.Context) error
}

// drainer is the forwarder as the agent drives it.
type drainer = pipeline.Drainer

var (
	_ station = (*bmp.Listener)(nil)
	_ drainer = (*forwarder.Forwarder)(nil)
	_ reacher = (*forwarder.Forwarder)(nil)
)

// Builders make the agent's parts. Tests replace them; DefaultBuilders uses
// the real packages.
type Builders struct {
	OpenSpool    func(cfg Config, log *slog.Logger, reg prometheus.Registerer) (Spool, error)
	NewStation   func(cfg Config, sp Spool, j *bmp.SessionJournal, log *slog.Logger, reg prometheus.Registerer) (station, error)
	NewForwarder func(cfg Config, sp Spool, log *slog.Logger, reg prometheus.Registerer) (drainer, error)
}

// Options configure an Agent.
type Options struct {
	Config Config
	Logger *slog.Logger
	// Level is the handler's level; Apply changes it when log.level changes.
	Level *slog.LevelVar
	// Registry receives the agent's own metrics and serves /metrics; every
	// part registers on a registry of its own, gathered with it, so a part
	// rebuilt by Apply can register again.
	Registry *prometheus.Registry
	// Builders default to DefaultBuilders().
	Builders *Builders
	// Notify is told about lifecycle changes ("READY=1", "RELOADING=1",
	// "STOPPING=1"); see SDNotify.
	Notify func(state string)
}

// Agent runs the spool, the BMP listener, the forwarder and the HTTP server,
// and applies configuration changes to them while running.
type Agent struct {
	log      *slog.Logger
	level    *slog.LevelVar
	reg      *prometheus.Registry
	gather   *partGatherers
	build    Builders
	notify   func(string)
	metrics  *agentMetrics
	retryLog *lograte.Logger

	// applyMu serialises Run's start-up, Apply and shutdown.
	applyMu sync.Mutex

	mu        sync.Mutex // guards the fields below (read by /readyz)
	cfg       Config
	spool     Spool
	spoolErr  error
	journal   *bmp.SessionJournal // opened (and recovered) once per run, shared by listeners
	station   *stationPart
	fwd       *forwarderPart
	http      *pipeline.HTTPServer
	applyErr  error
	startErr  error // the last failed start attempt, while retrying
	running   bool
	appliedAt time.Time
}

type stationPart struct {
	s   station
	cfg bmp.Config
	reg *prometheus.Registry
}

type forwarderPart struct {
	d   drainer
	run *pipeline.Drain
	cfg ForwarderConfig
	id  string
	reg *prometheus.Registry
}

// New checks the configuration and registers the agent's metrics. Nothing
// is opened or bound until Run.
func New(opts Options) (*Agent, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Level == nil {
		opts.Level = new(slog.LevelVar)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	b := DefaultBuilders()
	if opts.Builders != nil {
		b = *opts.Builders
	}
	if opts.Notify == nil {
		opts.Notify = func(string) {}
	}
	lvl, _ := parseLevel(opts.Config.Log.Level)
	opts.Level.Set(lvl)
	a := &Agent{
		log:    opts.Logger,
		level:  opts.Level,
		reg:    opts.Registry,
		gather: newPartGatherers(),
		build:  b,
		notify: opts.Notify,
		cfg:    opts.Config,
	}
	a.retryLog = lograte.NewLogger(opts.Logger, time.Minute)
	m, err := newAgentMetrics(opts.Registry, a)
	if err != nil {
		return nil, err
	}
	a.metrics = m
	return a, nil
}

// Gatherer serves /metrics: the agent's registry and every part's.
func (a *Agent) Gatherer() prometheus.Gatherer {
	return prometheus.Gatherers{a.reg, a.gather}
}

// Config is the configuration currently applied.
func (a *Agent) Config() Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// Run starts every part, keeps trying the ones that fail to start (a spool
// directory not mounted yet, an address not yet assigned) while reporting
// unready, and on ctx's end shuts down: sources first, then the forwarder's
// flush, then the spool, within agent.shutdown_timeout.
func (a *Agent) Run(ctx context.Context) error {
	a.applyMu.Lock()
	cfg := a.Config()
	if cfg.HTTP.Listen != "" {
		h, err := a.startHTTP(cfg.HTTP)
		if err != nil {
			a.applyMu.Unlock()
			return err
		}
		a.mu.Lock()
		a.http = h
		a.mu.Unlock()
	}
	a.applyMu.Unlock()

	err := a.startParts(ctx)
	if err == nil && ctx.Err() == nil { // not when stopped while still starting
		a.notify("READY=1")
		a.log.Info("agent ready", "agent_id", cfg.Agent.ID, "bmp", a.stationAddr(), "forwarder", cfg.Forwarder.Enabled)
		<-ctx.Done()
	}
	a.notify("STOPPING=1")
	return errors.Join(err, a.shutdown())
}

// startParts opens the spool, binds the listener and starts the forwarder,
// retrying with backoff until they all run or ctx ends.
func (a *Agent) startParts(ctx context.Context) error {
	wait := 250 * time.Millisecond
	for {
		err := a.tryStart(ctx)
		a.mu.Lock()
		a.startErr = err
		a.mu.Unlock()
		if err == nil {
			return nil
		}
		a.retryLog.Error("start", "agent not ready, retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil // a stop during start-up is not a failure
		case <-time.After(wait):
		}
		wait = min(wait*2, 10*time.Second)
	}
}

func (a *Agent) tryStart(ctx context.Context) error {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	cfg := a.Config()
	if a.spool == nil {
		sp, err := a.build.OpenSpool(cfg, a.log.With("component", "buffer"), a.gather.register("buffer"))
		a.mu.Lock()
		a.spool, a.spoolErr = sp, err
		a.mu.Unlock()
		if err != nil {
			a.gather.unregister("buffer")
			a.metrics.startFailures.WithLabelValues("spool").Inc()
			return fmt.Errorf("open spool: %w", err)
		}
	}
	// The forwarder starts before anything is appended at start: it is what
	// frees space in a full spool, so no start-up step may wait for space
	// ahead of it.
	if a.fwd == nil && cfg.Forwarder.Enabled {
		fw, err := a.newForwarder(cfg, a.spool)
		if err != nil {
			a.metrics.startFailures.WithLabelValues("forwarder").Inc()
			return err
		}
		if err := a.runForwarder(fw); err != nil {
			a.metrics.startFailures.WithLabelValues("forwarder").Inc()
			return err
		}
	}
	if a.journal == nil {
		// Bounded, so a spool that cannot take even the reserved records
		// (a full disk, a reserve used up by a crash loop while nothing
		// drains) is reported and retried instead of holding the start and
		// every reload behind it.
		jctx, cancel := context.WithTimeout(ctx, journalRecoverTimeout)
		j, err := openJournal(jctx, cfg, a.spool, a.log.With("component", "bmp"))
		cancel()
		if err != nil {
			a.metrics.startFailures.WithLabelValues("bmp").Inc()
			return err
		}
		a.mu.Lock()
		a.journal = j
		a.mu.Unlock()
	}
	if a.station == nil {
		st, err := a.startStation(ctx, cfg, a.spool)
		if err != nil {
			a.metrics.startFailures.WithLabelValues("bmp").Inc()
			return err
		}
		a.setStation(st)
	}
	a.mu.Lock()
	a.running = true
	a.appliedAt = time.Now()
	a.mu.Unlock()
	return nil
}

// journalRecoverTimeout bounds one attempt to spool the synthetic
// peer-downs of a previous run at start.
const journalRecoverTimeout = 10 * time.Second

// openJournal opens the BMP session journal in agent.state_dir and marks
// down the peers a previous run left up, before any listener starts.
func openJournal(ctx context.Context, cfg Config, sp Spool, log *slog.Logger) (*bmp.SessionJournal, error) {
	j, err := bmp.OpenSessionJournal(cfg.Agent.StateDir)
	if err != nil {
		return nil, err
	}
	if _, err := j.Recover(ctx, sp, log); err != nil {
		_ = j.Close()
		return nil, err
	}
	return j, nil
}

func (a *Agent) startStation(ctx context.Context, cfg Config, sp Spool) (*stationPart, error) {
	reg := prometheus.NewRegistry()
	a.mu.Lock()
	j := a.journal
	a.mu.Unlock()
	st, err := a.build.NewStation(cfg, sp, j, a.log.With("component", "bmp"), reg)
	if err != nil {
		return nil, fmt.Errorf("bmp listener: %w", err)
	}
	if err := st.Start(ctx); err != nil {
		_ = st.Close(ctx)
		return nil, fmt.Errorf("bmp listener: %w", err)
	}
	return &stationPart{s: st, cfg: cfg.BMP.Config, reg: reg}, nil
}

// setStation makes st the current listener, its metrics the ones served.
func (a *Agent) setStation(st *stationPart) {
	a.gather.set("bmp", st.reg)
	a.mu.Lock()
	a.station = st
	a.mu.Unlock()
}

func (a *Agent) newForwarder(cfg Config, sp Spool) (*forwarderPart, error) {
	reg := prometheus.NewRegistry()
	d, err := a.build.NewForwarder(cfg, sp, a.log, reg) // forwarder.New tags its own logs
	if err != nil {
		return nil, fmt.Errorf("forwarder: %w", err)
	}
	return &forwarderPart{d: d, run: pipeline.NewDrain(d, a.log), cfg: cfg.Forwarder, id: cfg.Agent.ID, reg: reg}, nil
}

// reacher is a forwarder that can tell, before it runs, which sink it
// would deliver to, and how it ranks sinks (by their role in
// forwarder.sinks: the first ranks highest, none 0).
type reacher interface {
	Reach(ctx context.Context) (string, error)
	Rank(sink string) int
}

// destinationsChanged reports whether next connects differently from cur
// (forwarder.DestinationsChanged: the sinks and their settings).
func destinationsChanged(cur, next Config) bool {
	return forwarder.DestinationsChanged(cur.ForwarderSettings(), next.ForwarderSettings())
}

// deliversNoLess refuses a new forwarder that reaches a lesser sink than the
// one the running forwarder delivers to, so a mistyped broker address or a
// wrong credential sent by reload or by central keeps records flowing
// instead of piling them up in the spool. While nothing delivers there is
// nothing to lose, and the new settings are taken without asking.
func deliversNoLess(ctx context.Context, old, next drainer) error {
	r, ok := next.(reacher)
	have := old.ActiveSink()
	if !ok || r.Rank(have) == 0 {
		return nil
	}
	got, err := r.Reach(ctx)
	if r.Rank(got) >= r.Rank(have) {
		return nil
	}
	if ctx.Err() != nil { // stopping: the probes were cut short
		return fmt.Errorf("forwarder: %w", ctx.Err())
	}
	return fmt.Errorf("forwarder: %w: the running forwarder delivers to %s, the new settings reach %s: %w", ErrDeliversLess, have, got, err)
}

func (fw *forwarderPart) discard() { fw.run.Discard() }

// runForwarder starts fw's drain loop and makes it the current forwarder.
func (a *Agent) runForwarder(fw *forwarderPart) error {
	if err := fw.run.Start(); err != nil {
		return err
	}
	a.gather.set("forwarder", fw.reg)
	a.mu.Lock()
	a.fwd = fw
	a.mu.Unlock()
	return nil
}

// stopForwarder ends fw's drain loop and waits for its flush, at most until ctx ends.
func stopForwarder(ctx context.Context, fw *forwarderPart) error { return fw.run.Stop(ctx) }

// startHTTP serves the agent's /metrics (every part's registry), /healthz
// and /readyz (Status).
func (a *Agent) startHTTP(cfg HTTPConfig) (*pipeline.HTTPServer, error) {
	return pipeline.StartHTTP(pipeline.HTTPOptions{
		Listen:   cfg.Listen,
		Pprof:    cfg.Pprof,
		Metrics:  a.Gatherer(),
		Ready:    func() (bool, any) { st := a.Status(); return st.Ready, st },
		Handlers: a.ribRoutes(),
	}, a.log)
}

func (a *Agent) shutdown() error {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	cfg := a.Config()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Agent.ShutdownTimeout)
	defer cancel()
	start := time.Now()

	a.mu.Lock()
	st, fw, sp, h, j := a.station, a.fwd, a.spool, a.http, a.journal
	a.station, a.fwd, a.running, a.journal = nil, nil, false, nil
	a.mu.Unlock()

	// Sources first, so everything they accepted is in the spool before the
	// forwarder's final flush; the journal once no session writes to it.
	stages := pipeline.Stages{Spool: sp, HTTP: h}
	if st != nil {
		stages.Inputs = append(stages.Inputs, pipeline.Input{Name: "bmp listener", Close: st.s.Close})
	}
	if j != nil {
		stages.Inputs = append(stages.Inputs, pipeline.Input{Name: "bmp session journal", Close: func(context.Context) error { return j.Close() }})
	}
	if fw != nil {
		stages.Drain = fw.run
	}
	err := pipeline.Shutdown(ctx, stages)
	if sp != nil {
		a.mu.Lock()
		a.spool = nil
		a.mu.Unlock()
	}
	if err != nil {
		a.log.Error("agent stopped with errors", "err", err, "took", time.Since(start))
	} else {
		a.log.Info("agent stopped", "took", time.Since(start))
	}
	return err
}

// Apply moves the running agent to next: it validates next, builds the
// parts that changed before stopping the old ones, and keeps the old ones
// (returning the error) if anything new fails to build. Parts that did not
// change are untouched, so BMP sessions survive an unrelated change.
func (a *Agent) Apply(ctx context.Context, next Config) (err error) {
	defer func() {
		a.mu.Lock()
		a.applyErr = err
		if err == nil {
			a.cfg = next
			a.appliedAt = time.Now()
		}
		a.mu.Unlock()
		if err != nil {
			a.metrics.applies.WithLabelValues("failed").Inc()
		} else {
			a.metrics.applies.WithLabelValues("applied").Inc()
		}
	}()
	if err := next.Validate(); err != nil {
		return err
	}
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	cur := a.Config()
	a.mu.Lock()
	running, sp, oldSt, oldFw, oldHTTP := a.running, a.spool, a.station, a.fwd, a.http
	a.mu.Unlock()

	if !reflect.DeepEqual(cur.Buffer, next.Buffer) {
		return fmt.Errorf("buffer: %w", ErrRestartRequired)
	}
	if cur.Agent.StateDir != next.Agent.StateDir {
		return fmt.Errorf("agent.state_dir: %w", ErrRestartRequired)
	}
	if cur.Log.Format != next.Log.Format {
		return fmt.Errorf("log.format: %w", ErrRestartRequired)
	}
	// The fleet watcher runs with the settings and the id the agent started with.
	if (cur.Fleet.Enabled || next.Fleet.Enabled) && !reflect.DeepEqual(cur.Fleet, next.Fleet) {
		return fmt.Errorf("fleet: %w", ErrRestartRequired)
	}
	if cur.Fleet.Enabled && cur.Agent.ID != next.Agent.ID {
		return fmt.Errorf("agent.id (with fleet enabled): %w", ErrRestartRequired)
	}
	if !running {
		return ErrNotRunning
	}

	bmpChanged := !reflect.DeepEqual(cur.BMP.Config, next.BMP.Config)
	// The encoding is the forwarder's business: the listener spools raw bytes.
	fwdChanged := !reflect.DeepEqual(cur.Forwarder, next.Forwarder) ||
		!reflect.DeepEqual(cur.BMP.Encoding, next.BMP.Encoding) ||
		(next.Forwarder.Enabled && cur.Agent.ID != next.Agent.ID)
	httpChanged := cur.HTTP != next.HTTP

	// Build phase: nothing old is touched; on failure, undo what was built.
	var (
		newSt   *stationPart
		newFw   *forwarderPart
		newHTTP *pipeline.HTTPServer
		rebind  = bmpChanged && cur.BMP.Listen == next.BMP.Listen
	)
	undo := func() {
		if newSt != nil {
			_ = newSt.s.Close(ctx)
		}
		if newFw != nil {
			newFw.discard()
		}
		if newHTTP != nil {
			_ = newHTTP.Close(ctx)
		}
	}
	// The forwarder first: asking it what it reaches can take seconds, and no
	// router should connect to a new listener that a refusal then closes.
	if fwdChanged && next.Forwarder.Enabled {
		if newFw, err = a.newForwarder(next, sp); err != nil {
			undo()
			return err
		}
	}
	if newFw != nil && oldFw != nil && destinationsChanged(cur, next) {
		if err = deliversNoLess(ctx, oldFw.d, newFw.d); err != nil {
			undo()
			return err
		}
	}
	if httpChanged && next.HTTP.Listen != "" && (oldHTTP == nil || next.HTTP.Listen != cur.HTTP.Listen) {
		if newHTTP, err = a.startHTTP(next.HTTP); err != nil {
			undo()
			return err
		}
	}
	if bmpChanged && !rebind {
		if newSt, err = a.startStation(ctx, next, sp); err != nil {
			undo()
			return err
		}
	}
	if rebind {
		// The address is the same, so the old listener must go first; if the
		// new one then fails, the old configuration is started again.
		if err := oldSt.s.Close(ctx); err != nil {
			a.log.Warn("closing bmp listener for reconfiguration", "err", err)
		}
		if newSt, err = a.startStation(ctx, next, sp); err != nil {
			back, berr := a.startStation(ctx, cur, sp)
			if berr != nil {
				a.mu.Lock()
				a.station = nil
				a.mu.Unlock()
				undo()
				return errors.Join(err, fmt.Errorf("restore previous bmp listener: %w", berr))
			}
			a.setStation(back)
			undo()
			return err
		}
		oldSt = nil // closed above
	}

	// Swap phase. The forwarder goes first: its new instance can only take
	// the decoding state once the old one let go of it, so it is the one
	// swap that can still fail, and then everything is rolled back.
	if fwdChanged {
		if oldFw != nil {
			// Two forwarders must never drain the spool at once.
			if err := stopForwarder(ctx, oldFw); err != nil {
				a.log.Warn("stopping previous forwarder", "err", err)
			}
			a.mu.Lock()
			a.fwd = nil
			a.mu.Unlock()
			a.gather.unregister("forwarder")
		}
		if newFw != nil {
			if err := a.runForwarder(newFw); err != nil {
				undo()
				if rebind { // the old listener was closed to free its address
					if back, berr := a.startStation(ctx, cur, sp); berr == nil {
						a.setStation(back)
					} else {
						err = errors.Join(err, fmt.Errorf("restore previous bmp listener: %w", berr))
					}
				}
				if cur.Forwarder.Enabled {
					back, berr := a.newForwarder(cur, sp)
					if berr == nil {
						berr = a.runForwarder(back)
					}
					if berr != nil {
						return errors.Join(err, fmt.Errorf("restore previous forwarder: %w", berr))
					}
				}
				return err
			}
		}
	}
	lvl, _ := parseLevel(next.Log.Level)
	a.level.Set(lvl)
	if newHTTP != nil || (httpChanged && next.HTTP.Listen == "") {
		a.mu.Lock()
		a.http = newHTTP
		a.mu.Unlock()
		if oldHTTP != nil {
			_ = oldHTTP.Close(ctx)
		}
	} else if httpChanged && oldHTTP != nil {
		oldHTTP.SetPprof(next.HTTP.Pprof)
	}
	if newSt != nil {
		a.setStation(newSt)
		if oldSt != nil {
			if err := oldSt.s.Close(ctx); err != nil {
				a.log.Warn("closing previous bmp listener", "err", err)
			}
		}
	}
	a.log.Info("configuration applied", "bmp_changed", bmpChanged, "forwarder_changed", fwdChanged, "http_changed", httpChanged)
	return nil
}

func (a *Agent) stationAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.station == nil || a.station.s.Addr() == nil {
		return ""
	}
	return a.station.s.Addr().String()
}

// HTTPAddr is the bound address of the HTTP server, or "" if it is off.
func (a *Agent) HTTPAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.http == nil {
		return ""
	}
	return a.http.Addr()
}

// BMPAddr is the bound address of the BMP listener, or "" before it is bound.
func (a *Agent) BMPAddr() string { return a.stationAddr() }

// Status is what /readyz reports.
type Status struct {
	Ready      bool      `json:"ready"`
	AgentID    string    `json:"agent_id"`
	Spool      string    `json:"spool"`
	BMP        string    `json:"bmp"`
	Sink       string    `json:"sink"`
	Config     string    `json:"config"`
	AppliedAt  time.Time `json:"applied_at,omitzero"`
	LastReload string    `json:"last_reload_error,omitempty"`
	// StartError is why the last attempt to start failed, while the agent
	// keeps retrying.
	StartError string `json:"start_error,omitempty"`
}

// Status reports readiness: the spool is open, the listener bound, the
// configuration applied; and which sink drains the spool.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{AgentID: a.cfg.Agent.ID, AppliedAt: a.appliedAt}
	switch {
	case a.spool != nil:
		s.Spool = "open"
	case a.spoolErr != nil:
		s.Spool = "error: " + a.spoolErr.Error()
	default:
		s.Spool = "closed"
	}
	if a.station != nil && a.station.s.Addr() != nil {
		s.BMP = "listening on " + a.station.s.Addr().String()
	} else {
		s.BMP = "not listening"
	}
	switch {
	case !a.cfg.Forwarder.Enabled:
		s.Sink = "disabled"
	case a.fwd == nil:
		s.Sink = "not running"
	default:
		s.Sink = a.fwd.d.ActiveSink()
	}
	if a.running {
		s.Config = "applied"
	} else {
		s.Config = "starting"
	}
	if a.applyErr != nil {
		s.LastReload = a.applyErr.Error()
	}
	if a.startErr != nil && !a.running {
		s.StartError = a.startErr.Error()
	}
	s.Ready = a.running && a.spool != nil && a.station != nil && (!a.cfg.Forwarder.Enabled || a.fwd != nil)
	return s
}
