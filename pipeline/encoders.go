package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/exabgp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
	"github.com/bgpedge/bgpedge/rib"
)

// BMPOptions configure the forwarder of `bgpedge run`.
type BMPOptions struct {
	Forwarder forwarder.Config
	Encoding  bmp.Encoding
	// RIB runs the route state between the encoder and the sinks; nil: off.
	RIB *rib.Options
}

// NewBMPForwarder builds the forwarder of `bgpedge run`: the spool's BMP
// records through the BMP encoder. The encoder holds the per-peer decoding
// state (a file only one process may hold), so it is opened in Prepare,
// once the previous forwarder has stopped, and closed when this one stops.
func NewBMPForwarder(opts BMPOptions, sp forwarder.Source, log *slog.Logger, reg prometheus.Registerer) (Drainer, error) {
	if err := opts.Encoding.Validate(); err != nil {
		return nil, err
	}
	ef := &encodingForwarder{opts: bmp.EncoderOptions{
		Encoding:   opts.Encoding,
		AgentID:    opts.Forwarder.AgentID,
		Logger:     log,
		Registerer: reg,
	}, ribOpts: opts.RIB}
	f, err := NewForwarder(opts.Forwarder, sp, bmpEncoder(ef), log, reg) // forwarder.New tags its own logs
	if err != nil {
		return nil, err
	}
	ef.Forwarder = f
	return ef, nil
}

// bmpEncoder is the BMP encoder as the forwarder calls it. `run` spools BMP
// records only: exaBGP events go through the `bgpedge exabgp` process's own
// spool.
func bmpEncoder(ef *encodingForwarder) forwarder.Encoder {
	f := forwarder.EncoderFunc(func(rec record.Record, emit func(record.Output)) error {
		return ef.enc.Encode(rec, emit)
	})
	// The decoder's per-peer state is locked and versioned by seq (a record
	// reads the state in force before it), so records encode in parallel;
	// what writes that state (a Peer Up, merging with the one before it) is
	// encoded alone, and so, to be safe, is the end of a peer or session.
	// The route state's timer records make nothing by themselves (the route
	// state withdraws what they expire); they may outlive a run with the
	// route state on.
	none := forwarder.EncoderFunc(func(record.Record, func(record.Output)) error { return nil })
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

// RIB is the open route state, nil while it is off or closed.
func (f *encodingForwarder) RIB() *rib.Stage { return f.live.Load() }

// ribEncoder is the BMP encoder followed, in spool order, by the route
// state: the forwarder finds the Sequencer on the encoder it is given.
type ribEncoder struct {
	forwarder.Encoder
	ef *encodingForwarder
}

var (
	_ forwarder.Sequencer  = ribEncoder{}
	_ forwarder.Prefetcher = ribEncoder{}
)

func (r ribEncoder) Rewind(from uint64) error { return r.ef.rib.Rewind(from) }

func (r ribEncoder) CommitThrough(seq uint64) error { return r.ef.rib.CommitThrough(seq) }

func (r ribEncoder) Prefetch(msgs []*forwarder.Outgoing) { r.ef.rib.Prefetch(msgs) }

func (r ribEncoder) Sequence(rec record.Record, msgs []*forwarder.Outgoing, emit func(*forwarder.Outgoing) error) error {
	return r.ef.rib.Sequence(rec, msgs, emit)
}

var _ Preparer = (*encodingForwarder)(nil)

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

// ExaBGPOptions configure the forwarder of `bgpedge exabgp`.
type ExaBGPOptions struct {
	Forwarder forwarder.Config
	// RawStream also emits every line on exabgp.raw (exabgp.raw_stream).
	RawStream bool
}

// NewExaBGPForwarder builds the forwarder of `bgpedge exabgp`: exaBGP lines
// through the exaBGP encoder. A BMP record, should one be in this spool,
// goes out raw.
func NewExaBGPForwarder(opts ExaBGPOptions, sp forwarder.Source, log *slog.Logger, reg prometheus.Registerer) (Drainer, error) {
	ex := &exabgp.Encoder{AgentID: opts.Forwarder.AgentID, Raw: opts.RawStream}
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
	raw, _ := bmp.Streams().RawOf(record.KindBMP)
	enc := forwarder.Mux{
		record.KindExaBGP: forwarder.EncoderFunc(ex.Encode),
		record.KindBMP:    forwarder.RawOf(raw),
	}
	return NewForwarder(opts.Forwarder, sp, enc, log, reg)
}

// NewForwarder is the one construction of a forwarder: enc drains sp, with
// the streams the sources declare (cfg.Topics.Streams, which the agent fills
// from its configuration). A source with an encoder of its own builds its
// forwarder here.
func NewForwarder(cfg forwarder.Config, sp forwarder.Source, enc forwarder.Encoder, log *slog.Logger, reg prometheus.Registerer) (*forwarder.Forwarder, error) {
	if len(cfg.Topics.Streams) == 0 {
		return nil, errors.New("pipeline: forwarder.topics has no declared streams")
	}
	return forwarder.New(cfg, sp, enc, log, reg)
}
