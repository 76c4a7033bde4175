package agent

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/pipeline"
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
	return pipeline.NewBMPForwarder(pipeline.BMPOptions{Forwarder: cfg.ForwarderSettings(), Encoding: cfg.BMP.Encoding}, sp, log, reg)
}
