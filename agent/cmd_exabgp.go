package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/exabgp"
	"github.com/bgpedge/bgpedge/pipeline"
)

// newExabgpCommand is `bgpedge exabgp`, the program exaBGP's `run` starts.
//
// It must never exit quickly on its own: exaBGP gives up (and exits, taking
// every BGP session down) after the 6th start of a process within 64 s. So a
// bad configuration or an unusable spool is logged and the process stays up,
// degraded, reading exaBGP so it does not stall, until exaBGP closes stdin.
func newExabgpCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "exabgp",
		Short: "Run as an exaBGP process: spool exaBGP's events, apply route commands from central",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runExabgp(cmd.Context(), file, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&file, "config", DefaultConfigFile, "configuration file (YAML); its exabgp: section configures this process")
	return cmd
}

func runExabgp(ctx context.Context, file string, stdin io.Reader, stdout, stderr io.Writer) error {
	level := new(slog.LevelVar)
	// stdout is exaBGP's command channel: logs go to stderr, which exaBGP
	// logs. base carries no "component": each part adds its own, once.
	base := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	log := base.With("component", "exabgp")
	acfg, ecfg, err := loadExabgpConfig(file)
	if err == nil {
		err = acfg.Validate()
	}
	if err != nil {
		log.Error("invalid configuration: running degraded, exaBGP events are NOT spooled", "config", file, "err", err)
		return readDegraded(ctx, stdin, log)
	}
	if l, lerr := parseLevel(acfg.Log.Level); lerr == nil {
		level.Set(l)
	}
	if l, lerr := NewLogger(stderr, acfg.Log.Format, level); lerr == nil {
		base = l
		log = base.With("component", "exabgp")
	}
	logEnvWarnings(log)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p, err := pipeline.New(exabgpPipelineOptions(acfg, base, reg))
	if err != nil {
		log.Error("cannot start: running degraded, exaBGP events are NOT spooled", "err", err)
		return readDegraded(ctx, stdin, log)
	}
	if err := p.StartHTTP(); err != nil {
		// Not fatal: exaBGP's sessions matter more than the endpoints.
		log.Error("http server not started", "addr", ecfg.MetricsListen, "err", err)
	}
	proc, err := exabgp.New(exabgp.Options{
		Config: ecfg, AgentID: acfg.Agent.ID,
		OpenSpool: func() (exabgp.Spool, error) { return p.Open() },
		In:        stdin, Out: stdout, Logger: log, Registerer: reg,
	})
	if err != nil {
		log.Error("cannot start: running degraded, exaBGP events are NOT spooled", "err", err)
		err = readDegraded(ctx, stdin, log)
		return errors.Join(err, p.Close())
	}
	// The process returns once it has appended what it read (its input is
	// stopped); then the forwarder flushes and the spool closes, bounded by
	// agent.shutdown_timeout.
	runErr := proc.Run(ctx)
	if err := p.Close(); err != nil {
		log.Error("pipeline stopped with errors", "err", err)
	}
	if runErr != nil {
		log.Error("exabgp process stopped", "err", runErr)
		return errSilent
	}
	return nil
}

// exabgpPipelineOptions configure the pipeline of `bgpedge exabgp`: a spool
// of its own (buffer.* with exabgp.state_dir/spool as its directory, see
// Config.ExaBGPBuffer), its forwarder (forwarder.*, when enabled) and
// /metrics, /healthz and /readyz on exabgp.metrics_listen. It is ready while
// its spool is open and, when forwarding, its forwarder runs: the state in
// which exaBGP's events are taken durably and sent on.
func exabgpPipelineOptions(cfg Config, log *slog.Logger, reg *prometheus.Registry) pipeline.Options {
	opts := pipeline.Options{
		Buffer:          cfg.ExaBGPBuffer(),
		HTTP:            pipeline.HTTPOptions{Listen: cfg.ExaBGP.MetricsListen},
		ShutdownTimeout: cfg.Agent.ShutdownTimeout,
		Logger:          log,
		Registry:        reg,
	}
	if cfg.Forwarder.Enabled {
		eo := pipeline.ExaBGPOptions{Forwarder: cfg.ForwarderSettings(), RawStream: cfg.ExaBGP.RawStream}
		opts.NewForwarder = func(sp pipeline.Spool, log *slog.Logger, reg prometheus.Registerer) (pipeline.Drainer, error) {
			return pipeline.NewExaBGPForwarder(eo, sp, log, reg)
		}
	}
	return opts
}

// readDegraded keeps reading exaBGP (so it does not stall and keeps its
// sessions) and discards what it reads, until exaBGP closes stdin.
func readDegraded(ctx context.Context, stdin io.Reader, log *slog.Logger) error {
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, stdin)
		done <- n
	}()
	select {
	case n := <-done:
		log.Warn("exabgp closed stdin; discarded bytes while degraded", "bytes", n)
	case <-ctx.Done():
	}
	return nil
}

// loadExabgpConfig reads the agent's configuration file (strictly, with
// BGPEDGE_* overrides); its exabgp: section configures this process.
func loadExabgpConfig(file string) (Config, exabgp.Config, error) {
	cfg, err := Load(LoadOptions{File: file, FileRequired: true})
	if err != nil {
		return Config{}, exabgp.Config{}, err
	}
	return cfg, cfg.ExaBGP, nil
}
