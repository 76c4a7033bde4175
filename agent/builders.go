package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/exabgp"
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
			return bmp.NewListener(cfg.BMP.Config, sp, log, reg)
		},
		NewForwarder: newForwarder,
	}
}

// newForwarder builds the forwarder with the BMP encoder. The encoder holds
// the per-peer decoding state, so it lives exactly as long as the forwarder.
func newForwarder(cfg Config, sp Spool, log *slog.Logger, reg prometheus.Registerer) (drainer, error) {
	enc, err := bmp.NewEncoder(bmp.EncoderOptions{
		Encoding:   cfg.BMP.Encoding,
		AgentID:    cfg.ForwarderSettings().AgentID,
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("bmp encoder: %w", err)
	}
	f, err := forwarder.New(cfg.ForwarderSettings(), sp, bmpEncoder(enc), log, reg)
	if err != nil {
		_ = enc.Close()
		return nil, err
	}
	return &encodingForwarder{Forwarder: f, enc: enc}, nil
}

// bmpEncoder adapts bmp's encoder (which does not import forwarder) to the
// forwarder's seam. `run` spools BMP records only: exaBGP events go through
// the `bgpedge exabgp` process's own spool.
func bmpEncoder(enc *bmp.Encoder) forwarder.Encoder {
	f := forwarder.EncoderFunc(func(rec record.Record, emit func(forwarder.Message)) error {
		return enc.Encode(rec, func(o bmp.Output) {
			emit(forwarder.Message{Stream: o.Stream, Key: o.Key, Value: o.Value, Index: o.Index})
		})
	})
	return forwarder.Mux{record.KindBMP: f, record.KindBMPSyntheticPeerDown: f}
}

type encodingForwarder struct {
	*forwarder.Forwarder
	enc *bmp.Encoder
}

// Run drains until ctx ends, then releases the encoder's state.
func (f *encodingForwarder) Run(ctx context.Context) error {
	err := f.Forwarder.Run(ctx)
	return errors.Join(err, f.enc.Close())
}

// Encoder is the encoder of the `bgpedge exabgp` process's forwarder: its
// spool holds exaBGP lines. BMP records, should one be there, go out raw.
func Encoder(cfg Config) forwarder.Encoder {
	ex := &exabgp.Encoder{AgentID: cfg.ForwarderSettings().AgentID, Raw: cfg.ExaBGP.RawStream}
	return forwarder.Mux{
		record.KindExaBGP: forwarder.StreamEncoderFunc(ex.Encode),
		record.KindBMP:    forwarder.Raw{},
	}
}
