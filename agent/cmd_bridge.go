package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/pipeline"
)

func newBridgeCommand() *cobra.Command {
	var (
		flags         configFlags
		durable       string
		batch         int
		metricsListen string
	)
	cmd := &cobra.Command{
		Use:   "bridge",
		Short: "Move what the forwarder sent to NATS JetStream into Kafka (same ids, JetStream acked after Kafka)",
		Long: `bridge consumes the forwarder's JetStream stream (forwarder.nats.stream) with a
durable consumer and produces every message to the Kafka topic of its stream
(forwarder.topics), with the same id and headers. A JetStream message is
acknowledged only after Kafka acknowledged it, so data that took the offline
path while Kafka was down still ends in Kafka. Runs until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := flags.load()
			if err != nil {
				return err
			}
			l, err := parseLevel(cfg.Log.Level)
			if err != nil {
				return fmt.Errorf("log.level: %w", err)
			}
			level := new(slog.LevelVar)
			level.Set(l)
			log, err := NewLogger(cmd.ErrOrStderr(), cfg.Log.Format, level)
			if err != nil {
				return err
			}
			reg := prometheus.NewRegistry()
			b, err := forwarder.NewBridge(forwarder.BridgeOptions{
				Config:     cfg.ForwarderSettings(),
				Durable:    durable,
				Batch:      batch,
				Logger:     log,
				Registerer: reg,
			})
			if err != nil {
				return err
			}
			// The bridge moves JetStream into Kafka: it has no spool of its
			// own, so of a pipeline it takes the HTTP endpoints (/metrics,
			// /healthz; no /readyz: it has no state to be ready in) and the
			// bounded shutdown.
			var stages pipeline.Stages
			if metricsListen != "" {
				if stages.HTTP, err = pipeline.StartHTTP(pipeline.HTTPOptions{Listen: metricsListen, Metrics: reg}, log); err != nil {
					return err
				}
			}
			log.Info("bridging jetstream to kafka", "stream", cfg.Forwarder.NATS.Stream, "durable", durable)
			err = b.Run(cmd.Context())
			log.Info("bridge stopped", "moved", b.Moved())
			ctx, cancel := context.WithTimeout(context.Background(), cfg.Agent.ShutdownTimeout)
			defer cancel()
			return errors.Join(err, pipeline.Shutdown(ctx, stages))
		},
	}
	flags.register(cmd.Flags())
	cmd.Flags().StringVar(&durable, "durable", "bgpedge-bridge", "JetStream durable consumer name (a restarted bridge continues where it stopped)")
	cmd.Flags().IntVar(&batch, "batch", 1000, "messages fetched from JetStream at once")
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", "", "serve the bridge's Prometheus metrics (/metrics) and /healthz on this address; off when empty")
	return cmd
}
