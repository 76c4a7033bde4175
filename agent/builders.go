package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
	"github.com/bgpedge/bgpedge/rib"
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
	if cfg.BMP.RIB.Enabled {
		ef.ribOpts = &rib.Options{Config: cfg.BMP.RIB, Dir: cfg.Agent.StateDir, AgentID: ef.opts.AgentID, Logger: log, Registerer: reg,
			Append: func(ctx context.Context, rec record.Record) error { _, err := sp.Append(ctx, rec); return err }}
	}
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
	// The route state's timer records make nothing by themselves (the
	// route state withdraws what they expire); they may outlive a run with
	// the route state on.
	none := forwarder.EncoderFunc(func(record.Record, func(forwarder.Message)) error { return nil })
	var enc forwarder.Encoder = forwarder.Mux{record.KindBMP: f, record.KindBMPSyntheticPeerDown: f, record.KindRIBTimer: none}
	if ef.ribOpts != nil {
		enc = ribEncoder{Encoder: enc, ef: ef}
	}
	return forwarder.Parallel{
		Encoder: enc,
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
	opts    bmp.EncoderOptions
	enc     *bmp.Encoder              // set by Prepare, before Run; the forwarder encodes only while running
	ribOpts *rib.Options              // nil: route state off
	rib     *rib.Stage                // set by Prepare when ribOpts is set
	live    atomic.Pointer[rib.Stage] // rib while open, for GET /rib
}

// ribHandler serves GET /rib (`bgpedge rib show`) from the running route
// state.
func (a *Agent) ribHandler() http.Handler {
	return rib.Handler(func() *rib.Stage {
		a.mu.Lock()
		fp := a.fwd
		a.mu.Unlock()
		if fp == nil {
			return nil
		}
		if ef, ok := fp.d.(*encodingForwarder); ok {
			return ef.live.Load()
		}
		return nil
	})
}

// ribEncoder is the BMP encoder followed, in spool order, by the route
// state: the forwarder finds the Sequencer on the encoder it is given.
type ribEncoder struct {
	forwarder.Encoder
	ef *encodingForwarder
}

var _ forwarder.Sequencer = ribEncoder{}

func (r ribEncoder) Rewind(from uint64) error { return r.ef.rib.Rewind(from) }

func (r ribEncoder) CommitThrough(seq uint64) error { return r.ef.rib.CommitThrough(seq) }

func (r ribEncoder) Sequence(rec record.Record, msgs []*forwarder.Outgoing, emit func(*forwarder.Outgoing) error) error {
	return r.ef.rib.Sequence(rec, msgs, emit)
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
	if f.ribOpts != nil {
		st, err := rib.Open(*f.ribOpts)
		if err != nil {
			_ = enc.Close()
			return fmt.Errorf("route state: %w", err)
		}
		f.rib = st
		f.live.Store(st)
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
	if f.rib != nil {
		f.live.Store(nil)
		_ = f.rib.Close()
		f.rib = nil
	}
}

// Run drains until ctx ends, then releases the encoder's state.
func (f *encodingForwarder) Run(ctx context.Context) error {
	if err := f.Prepare(); err != nil {
		return err
	}
	err := f.Forwarder.Run(ctx)
	err = errors.Join(err, f.enc.Close())
	if f.rib != nil {
		f.live.Store(nil)
		err = errors.Join(err, f.rib.Close())
	}
	return err
}
