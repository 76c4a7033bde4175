package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/kardianos/service"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/internal/gctune"
)

func newRunCommand() *cobra.Command {
	var flags configFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: BMP station, spool, forwarder and HTTP endpoints (SIGHUP reloads)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			prg := &program{ctx: cmd.Context(), flags: flags, stderr: cmd.ErrOrStderr(), stopped: make(chan struct{})}
			sc := serviceConfig(flags.file)
			// The service manager's signals reach cmd.Context() (see main);
			// the run also ends when the agent stops by itself.
			sc.Option["RunWait"] = func() {
				select {
				case <-cmd.Context().Done():
				case <-prg.stopped:
				}
			}
			s, err := service.New(prg, sc)
			if err != nil {
				return fmt.Errorf("service: %w", err)
			}
			if err := s.Run(); err != nil {
				return err
			}
			return prg.result()
		},
	}
	flags.register(cmd.Flags())
	return cmd
}

// program adapts the agent to kardianos/service's Start/Stop lifecycle.
type program struct {
	ctx    context.Context
	flags  configFlags
	stderr io.Writer

	stopped chan struct{} // closed when the agent ends by itself or is stopped
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	err     error
}

var _ service.Interface = (*program)(nil)

// Start must not block: it loads the configuration (a bad one fails the
// start) and runs the agent in the background.
func (p *program) Start(service.Service) error {
	src := &configSource{opts: p.flags.options()}
	cfg, err := src.load()
	if err != nil {
		fmt.Fprintf(p.stderr, "bgpedge: %v\n", err)
		return printed(err)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		err := runAgent(ctx, cfg, src, p.stderr)
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.stopped)
	}()
	return nil
}

// Stop shuts the agent down and waits for it.
func (p *program) Stop(service.Service) error {
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	<-p.done
	return nil
}

func (p *program) result() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// runAgent runs one agent until ctx ends, reloading the configuration on
// SIGHUP and applying central documents when fleet is enabled.
func runAgent(ctx context.Context, cfg Config, src *configSource, stderr io.Writer, onStart ...func(*Agent)) error {
	level := new(slog.LevelVar)
	logger, err := NewLogger(stderr, cfg.Log.Format, level)
	if err != nil {
		return err
	}
	logEnvWarnings(logger)
	var fleet *fleetWatcher
	if cfg.Fleet.Enabled {
		fleet = &fleetWatcher{cfg: cfg.Fleet, agentID: cfg.Agent.ID, src: src, dir: cfg.Agent.StateDir, log: logger}
		// Central may be unreachable: start from what central published.
		cfg = fleet.startConfig(cfg)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	var a *Agent
	var ready atomic.Bool // the agent said READY=1: every part runs
	readyCh := make(chan struct{})
	notify := func(state string) {
		if err := SDNotify(state); err != nil {
			logger.Warn("sd_notify failed", "state", state, "err", err)
		}
	}
	agentNotify := func(state string) {
		notify(state)
		if state != "READY=1" || !ready.CompareAndSwap(false, true) {
			return
		}
		close(readyCh)
		if fleet != nil {
			// Central documents apply to a running agent only.
			fleet.ready()
			fleet.apply = a.Apply
			go fleet.run(ctx)
		}
	}
	a, err = New(Options{Config: cfg, Logger: logger, Level: level, Registry: reg, Notify: agentNotify})
	if err != nil {
		return err
	}

	for _, f := range onStart {
		f(a)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	gc := gctune.Current(os.Getenv)
	logger.Info("bgpedge starting", "version", Version, "commit", Commit, "config", src.opts.File, "agent_id", cfg.Agent.ID,
		"gogc", gc.Percent, "memory_limit_bytes", gc.MemoryLimit, "gc_from_env", gc.FromEnv)
	// A SIGHUP before the agent is ready waits for it: the parts only take a
	// new configuration once they run, and telling systemd READY=1 after a
	// reload of a starting agent would be false.
	deferred, readyC := false, (<-chan struct{})(readyCh)
	for {
		select {
		case err := <-runDone:
			return err
		case <-readyC:
			readyC = nil
			if !deferred {
				continue
			}
			deferred = false
			logger.Info("reload: applying the reload requested while the agent was starting")
		case <-hup:
			if !ready.Load() {
				if !deferred {
					logger.Warn("reload deferred: the agent is still starting; the file is read again once it is ready")
				}
				deferred = true
				continue
			}
		}
		notify("RELOADING=1")
		reload(ctx, a, src, logger)
		notify("READY=1")
	}
}

func reload(ctx context.Context, a *Agent, src *configSource, logger *slog.Logger) {
	src.applying.Lock()
	defer src.applying.Unlock()
	next, err := src.load()
	if err != nil {
		logger.Error("reload: configuration rejected, keeping the running one", "err", err)
		return
	}
	if err := a.Apply(ctx, next); err != nil {
		if errors.Is(err, ErrRestartRequired) {
			logger.Warn("reload: change not applied, restart the service to apply it", "err", err)
			return
		}
		logger.Error("reload: failed, keeping the running configuration", "err", err)
		return
	}
	logger.Info("reload: configuration applied")
}
