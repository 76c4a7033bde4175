package agent

import (
	"context"
	"errors"
	"fmt"
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
		NewStation: func(cfg Config, sp Spool, j *bmp.SessionJournal, log *slog.Logger, reg prometheus.Registerer) (station, error) {
			if j == nil {
				return bmp.NewListener(cfg.BMP.Config, sp, log, reg)
			}
			return bmp.NewListener(cfg.BMP.Config, sp, log, reg, bmp.WithSessionJournal(j))
		},
		NewForwarder: newForwarder,
	}
}

// newForwarder builds the forwarder with the BMP encoder. The encoder holds
// the per-peer decoding state (a file only one process may hold), so it is
// opened in Prepare, once the previous forwarder has stopped, and closed
// when this one stops.
func newForwarder(cfg Config, sp Spool, log *slog.Logger, reg prometheus.Registerer) (drainer, error) {
	if err := cfg.BMP.Encoding.Validate(); err != nil {
		return nil, err
	}
	ef := &encodingForwarder{opts: bmp.EncoderOptions{
		Encoding:   cfg.BMP.Encoding,
		AgentID:    cfg.ForwarderSettings().AgentID,
		Logger:     log,
		Registerer: reg,
	}}
	f, err := forwarder.New(cfg.ForwarderSettings(), sp, bmpEncoder(ef), log, reg)
	if err != nil {
		return nil, err
	}
	ef.Forwarder = f
	return ef, nil
}

// bmpEncoder adapts bmp's encoder (which does not import forwarder) to the
// forwarder's seam. `run` spools BMP records only: exaBGP events go through
// the `bgpedge exabgp` process's own spool.
func bmpEncoder(ef *encodingForwarder) forwarder.Encoder {
	f := forwarder.EncoderFunc(func(rec record.Record, emit func(forwarder.Message)) error {
		return ef.enc.Encode(rec, func(o bmp.Output) {
			emit(forwarder.Message{Stream: o.Stream, Key: o.Key, Value: o.Value, Index: o.Index})
		})
	})
	// The decoder's per-peer state is locked and versioned by seq (a record
	// reads the state in force before it), so records encode in parallel;
	// what writes that state (a Peer Up, merging with the one before it) is
	// encoded alone, and so, to be safe, is the end of a peer or session.
	return forwarder.Parallel{
		Encoder: forwarder.Mux{record.KindBMP: f, record.KindBMPSyntheticPeerDown: f},
		Ordered: func(rec record.Record) bool {
			if rec.Kind != record.KindBMP || len(rec.Payload) < bmp.HeaderLen {
				return true
			}
			switch bmp.MsgType(rec.Payload[5]) {
			case bmp.MsgPeerUp, bmp.MsgPeerDown, bmp.MsgTermination:
				return true
			}
			return false
		},
	}
}

type encodingForwarder struct {
	*forwarder.Forwarder
	opts bmp.EncoderOptions
	enc  *bmp.Encoder // set by Prepare, before Run; the forwarder encodes only while running
}

var _ preparer = (*encodingForwarder)(nil)

// Prepare opens the encoder and its decoding state.
func (f *encodingForwarder) Prepare() error {
	if f.enc != nil {
		return nil
	}
	enc, err := bmp.NewEncoder(f.opts)
	if err != nil {
		return fmt.Errorf("bmp encoder: %w", err)
	}
	f.enc = enc
	return nil
}

// Discard releases what Prepare took, for a forwarder that will not run.
func (f *encodingForwarder) Discard() {
	if f.enc != nil {
		_ = f.enc.Close()
		f.enc = nil
	}
}

// Run drains until ctx ends, then releases the encoder's state.
func (f *encodingForwarder) Run(ctx context.Context) error {
	if err := f.Prepare(); err != nil {
		return err
	}
	err := f.Forwarder.Run(ctx)
	return errors.Join(err, f.enc.Close())
}
