package agent

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/pipeline"
	"github.com/bgpedge/bgpedge/record"
	"github.com/bgpedge/bgpedge/rib"
)

// DefaultBuilders builds the real spool, BMP listener and forwarder, through
// the pipeline package (the one construction of spool and forwarder).
func DefaultBuilders() Builders {
	return Builders{
		OpenSpool: func(cfg Config, log *slog.Logger, reg prometheus.Registerer) (Spool, error) {
			sp, err := pipeline.OpenSpool(cfg.Buffer, log, reg)
			if err != nil {
				return nil, err
			}
			return sp, nil
		},
		NewStation: func(cfg Config, sp Spool, j *bmp.SessionJournal, log *slog.Logger, reg prometheus.Registerer) (station, error) {
			if j == nil {
				return bmp.NewListener(cfg.BMP.Config, sp, log, reg)
			}
			return bmp.NewListener(cfg.BMP.Config, sp, log, reg, bmp.WithSessionJournal(j))
		},
		NewForwarder: newForwarder,
	}
}

// newForwarder builds the forwarder of `bgpedge run`: BMP records through
// the BMP encoder.
func newForwarder(cfg Config, sp Spool, log *slog.Logger, reg prometheus.Registerer) (drainer, error) {
	opts := pipeline.BMPOptions{Forwarder: cfg.ForwarderSettings(), Encoding: cfg.BMP.Encoding}
	if cfg.BMP.RIB.Enabled {
		// The route state spools its timer records through the agent's spool,
		// so their decisions take their place in spool order.
		opts.RIB = &rib.Options{Config: cfg.BMP.RIB, Dir: cfg.Agent.StateDir, AgentID: opts.Forwarder.AgentID, Logger: log, Registerer: reg,
			Append: func(ctx context.Context, rec record.Record) error { _, err := sp.Append(ctx, rec); return err }}
	}
	return pipeline.NewBMPForwarder(opts, sp, log, reg)
}
