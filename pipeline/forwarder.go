package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/bgpedge/bgpedge/forwarder"
)

// Drainer is the forwarder as a pipeline drives it.
type Drainer interface {
	Run(ctx context.Context) error
	ActiveSink() string
}

var _ Drainer = (*forwarder.Forwarder)(nil)

// Preparer is a forwarder that takes resources it cannot share with its
// predecessor (the BMP decoding state) only when it is about to run.
type Preparer interface {
	Prepare() error
	Discard()
}

// Drain is one forwarder's drain loop: built, then started once, then
// stopped (its final flush bounded by the caller's deadline).
type Drain struct {
	d      Drainer
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// NewDrain wraps a built forwarder; nothing runs until Start.
func NewDrain(d Drainer, log *slog.Logger) *Drain {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Drain{d: d, log: log}
}

// Drainer is the forwarder this drain runs.
func (r *Drain) Drainer() Drainer { return r.d }

// ActiveSink is the sink the forwarder delivers to now ("" for none).
func (r *Drain) ActiveSink() string { return r.d.ActiveSink() }

// Start prepares the forwarder and runs its drain loop until Stop.
func (r *Drain) Start() error {
	if p, ok := r.d.(Preparer); ok {
		if err := p.Prepare(); err != nil {
			return fmt.Errorf("forwarder: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		if err := r.d.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			r.err = err
			r.log.Error("forwarder stopped", "err", err)
		}
	}()
	return nil
}

// Discard releases what a forwarder that will not run took in Prepare.
func (r *Drain) Discard() {
	if p, ok := r.d.(Preparer); ok {
		p.Discard()
	}
}

// Stop ends the drain loop and waits for its final flush, at most until
// ctx ends. A drain never started stops at once.
func (r *Drain) Stop(ctx context.Context) error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return fmt.Errorf("forwarder flush: %w", ctx.Err())
	}
}
