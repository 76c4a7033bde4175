package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/exabgp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
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
	// stdout is exaBGP's command channel: logs go to stderr, which exaBGP logs.
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With("component", "exabgp")
	acfg, ecfg, err := loadExabgpConfig(file)
	if err == nil {
		err = acfg.Validate()
	}
	if err == nil {
		err = ecfg.Validate()
	}
	if err != nil {
		log.Error("invalid configuration: running degraded, exaBGP events are NOT spooled", "config", file, "err", err)
		return readDegraded(ctx, stdin, log)
	}
	if l, lerr := parseLevel(acfg.Log.Level); lerr == nil {
		level.Set(l)
	}
	if l, lerr := NewLogger(stderr, acfg.Log.Format, level); lerr == nil {
		log = l.With("component", "exabgp")
	}
	logEnvWarnings(log)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if ecfg.MetricsListen != "" {
		stopHTTP := serveMetrics(ecfg.MetricsListen, reg, log)
		defer stopHTTP()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		spool *buffer.Spool
		fwd   = make(chan struct{})
		fwdOn bool
	)
	open := func() (exabgp.Spool, error) {
		sp, err := buffer.Open(buffer.Options{
			Dir:        ecfg.SpoolDir(),
			MaxBytes:   ecfg.SpoolMaxBytes,
			FirstSeq:   buffer.SeqFromClock(time.Now()),
			Policy:     buffer.PolicyBlock,
			Logger:     log.With("component", "buffer"),
			Registerer: reg,
		})
		if err != nil {
			return nil, err
		}
		mu.Lock()
		spool = sp
		mu.Unlock()
		if acfg.Forwarder.Enabled {
			enc, err := exabgpEncoder(acfg, reg)
			if err != nil {
				return nil, err
			}
			f, err := forwarder.New(acfg.ForwarderSettings(), sp, enc, log.With("component", "forwarder"), reg)
			if err != nil {
				log.Error("forwarder not started: events stay in the spool", "err", err)
			} else {
				mu.Lock()
				fwdOn = true
				mu.Unlock()
				go func() {
					defer close(fwd)
					if err := f.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
						log.Error("forwarder stopped", "err", err)
					}
				}()
			}
		}
		return sp, nil
	}
	proc, err := exabgp.New(exabgp.Options{
		Config: ecfg, AgentID: acfg.Agent.ID, OpenSpool: open,
		In: stdin, Out: stdout, Logger: log, Registerer: reg,
	})
	if err != nil {
		log.Error("cannot start: running degraded, exaBGP events are NOT spooled", "err", err)
		return readDegraded(ctx, stdin, log)
	}
	runErr := proc.Run(ctx)
	cancel()
	mu.Lock()
	sp, forwarding := spool, fwdOn
	mu.Unlock()
	if forwarding {
		select {
		case <-fwd:
		case <-time.After(acfg.Agent.ShutdownTimeout):
			log.Warn("forwarder did not stop in time")
		}
	}
	if sp != nil {
		if err := sp.Close(); err != nil {
			log.Error("close spool", "err", err)
		}
	}
	if runErr != nil {
		log.Error("exabgp process stopped", "err", runErr)
		return errSilent
	}
	return nil
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

func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) func() {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Error("metrics listener not started", "addr", addr, "err", err)
		return func() {}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
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

// exabgpEncoder adapts exabgp's encoder to the forwarder's seam. A BMP
// record, should one be in this spool, goes out raw.
func exabgpEncoder(cfg Config, reg prometheus.Registerer) (forwarder.Encoder, error) {
	ex := &exabgp.Encoder{AgentID: cfg.ForwarderSettings().AgentID, Raw: cfg.ExaBGP.RawStream}
	// Re-encodes after a sink retry count again: the counter is of decode
	// attempts that failed, not of distinct lines.
	for reason, count := range map[string]func() uint64{
		"line":   func() uint64 { n, _ := ex.DecodeErrors(); return n },
		"update": func() uint64 { _, n := ex.DecodeErrors(); return n },
	} {
		if err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "bgpedge_exabgp_decode_errors_total",
			Help:        "exaBGP events that did not decode (kept raw, reported on exabgp.errors), by reason: line (not exaBGP's JSON, or not normalisable), update (a raw UPDATE inside an event).",
			ConstLabels: prometheus.Labels{"reason": reason},
		}, func() float64 { return float64(count()) })); err != nil {
			return nil, fmt.Errorf("register exabgp encoder metrics: %w", err)
		}
	}
	return forwarder.Mux{
		record.KindExaBGP: forwarder.StreamEncoderFunc(ex.Encode),
		record.KindBMP:    forwarder.Raw{},
	}, nil
}
