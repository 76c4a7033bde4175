package agent

import (
	"log/slog"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
)

var _ Spool = (*buffer.Spool)(nil)

// DefaultBuilders builds the real spool, BMP listener and forwarder.
func DefaultBuilders() Builders {
	return Builders{
		OpenSpool: func(cfg Config, log *slog.Logger, reg prometheus.Registerer) (Spool, error) {
			sp, err := buffer.Open(cfg.Buffer.Options(log, reg))
			if err != nil {
				return nil, err
			}
			return sp, nil
		},
		NewStation: func(cfg Config, sp Spool, log *slog.Logger, reg prometheus.Registerer) (station, error) {
			return bmp.NewListener(cfg.BMP, sp, log, reg)
		},
		NewForwarder: func(cfg Config, sp Spool, log *slog.Logger, reg prometheus.Registerer) (drainer, error) {
			return forwarder.New(cfg.ForwarderSettings(), sp, Encoder(cfg), log, reg)
		},
	}
}

// Encoder turns the records `run` spools (BMP only: exaBGP events go through
// the `bgpedge exabgp` process's own spool) into output messages.
func Encoder(Config) forwarder.Encoder {
	return forwarder.Mux{
		record.KindBMP: forwarder.Raw{},
	}
}
