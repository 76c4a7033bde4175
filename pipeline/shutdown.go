package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// CloseGrace is how long a close may still take once the shutdown deadline
// has passed.
const CloseGrace = 5 * time.Second

// CloseWithin runs closeFn and waits for it until ctx ends, then at most
// grace more. A close stuck on a stalled disk (a bbolt transaction or an
// fdatasync that does not return) must not hold the process: what it did
// not finish is what a crash leaves, and the spool and journals recover
// from that.
func CloseWithin(ctx context.Context, grace time.Duration, what string, closeFn func() error) error {
	done := make(chan error, 1)
	go func() { done <- closeFn() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case err = <-done:
		case <-t.C:
			return fmt.Errorf("close %s: still blocked %v after the shutdown deadline; left behind", what, grace)
		}
	}
	if err != nil {
		return fmt.Errorf("close %s: %w", what, err)
	}
	return nil
}

// Input is a source of records the pipeline stops first at shutdown.
type Input struct {
	// Name is used in errors: "close <name>: …".
	Name string
	// Close stops the input; everything it accepted must be in the spool
	// when it returns. It is left behind (CloseWithin) if it does not
	// return by the deadline and CloseGrace after.
	Close func(ctx context.Context) error
}

// Stages is what Shutdown stops; nil parts are skipped.
type Stages struct {
	Inputs []Input
	Drain  *Drain
	Spool  Spool
	HTTP   *HTTPServer
}

// Shutdown stops a pipeline in order, all within ctx's deadline: the inputs
// first, so that everything they accepted is in the spool before the
// forwarder's final flush; then the forwarder's flush; then the spool's
// close (bounded: CloseWithin); the HTTP server last, so that /readyz
// answers while the pipeline stops.
func Shutdown(ctx context.Context, s Stages) error {
	var errs []error
	for _, in := range s.Inputs {
		if err := CloseWithin(ctx, CloseGrace, in.Name, func() error { return in.Close(ctx) }); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Drain != nil {
		if err := s.Drain.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Spool != nil {
		if err := CloseWithin(ctx, CloseGrace, "spool", s.Spool.Close); err != nil {
			errs = append(errs, err)
		}
	}
	if s.HTTP != nil {
		if err := s.HTTP.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
