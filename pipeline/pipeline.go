package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/buffer"
)

// ForwarderFunc builds the forwarder that drains sp; forwarder.New tags its
// own logs.
type ForwarderFunc func(sp Spool, log *slog.Logger, reg prometheus.Registerer) (Drainer, error)

// Options configure a Pipeline.
type Options struct {
	// Buffer is the spool's configuration (buffer.*), every setting honoured.
	Buffer buffer.Config
	// NewForwarder builds the forwarder once the spool is open; nil keeps
	// records in the spool.
	NewForwarder ForwarderFunc
	// HTTP, if its Listen is set, serves /metrics (Registry, or HTTP.Metrics),
	// /healthz and /readyz (Status, or HTTP.Ready).
	HTTP HTTPOptions
	// ShutdownTimeout bounds Close: inputs, the forwarder's flush and the
	// spool's close together.
	ShutdownTimeout time.Duration
	// Logger is the process's logger, without a "component": each part
	// adds its own.
	Logger *slog.Logger
	// Registry receives the spool's and the forwarder's metrics.
	Registry *prometheus.Registry
}

// Pipeline is a spool, the forwarder that drains it and the HTTP endpoints
// of a command that has no reload (`bgpedge exabgp`, `bgpedge bridge`);
// `bgpedge run`, which rebuilds parts on reload, composes the same parts
// itself (package agent).
type Pipeline struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	spool    Spool
	drain    *Drain
	http     *HTTPServer
	startErr error
	closed   bool
}

// New checks opts; nothing is opened until Open and StartHTTP.
func New(opts Options) (*Pipeline, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.ShutdownTimeout <= 0 {
		return nil, errors.New("pipeline: shutdown timeout must be positive")
	}
	if err := opts.Buffer.Validate(); err != nil {
		return nil, err
	}
	return &Pipeline{opts: opts, log: opts.Logger}, nil
}

// StartHTTP starts the HTTP server if HTTP.Listen is set.
func (p *Pipeline) StartHTTP() error {
	h := p.opts.HTTP
	if h.Listen == "" {
		return nil
	}
	if h.Metrics == nil {
		h.Metrics = p.opts.Registry
	}
	if h.Ready == nil {
		h.Ready = func() (bool, any) { st := p.Status(); return st.Ready, st }
	}
	srv, err := StartHTTP(h, p.log.With("component", "http"))
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.http = srv
	p.mu.Unlock()
	return nil
}

// HTTPAddr is the HTTP server's bound address, "" if it is off.
func (p *Pipeline) HTTPAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.http == nil {
		return ""
	}
	return p.http.Addr()
}

// ErrClosed is returned by Open after Close.
var ErrClosed = errors.New("pipeline closed")

// Open opens the spool and starts its forwarder, once; later calls return
// the open spool. The forwarder starts before Open returns, so before
// anything is appended: it is what frees space in a full spool. A spool
// that does not open is an error (the caller retries); a forwarder that
// cannot be built leaves the records in the spool, logged and reported by
// Status.
func (p *Pipeline) Open() (Spool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if p.spool != nil {
		return p.spool, nil
	}
	sp, err := OpenSpool(p.opts.Buffer, p.log.With("component", "buffer"), p.opts.Registry)
	if err != nil {
		p.startErr = fmt.Errorf("open spool: %w", err)
		return nil, err
	}
	p.spool, p.startErr = sp, nil
	if p.opts.NewForwarder == nil {
		return sp, nil
	}
	d, err := p.opts.NewForwarder(sp, p.log, p.opts.Registry)
	if err == nil {
		dr := NewDrain(d, p.log.With("component", "forwarder"))
		if err = dr.Start(); err == nil {
			p.drain = dr
		} else {
			dr.Discard()
		}
	}
	if err != nil {
		p.startErr = fmt.Errorf("forwarder: %w", err)
		p.log.Error("forwarder not started: records stay in the spool", "component", "forwarder", "err", err)
	}
	return sp, nil
}

// Status is what /readyz reports for a Pipeline.
type Status struct {
	// Ready: the spool is open (records are accepted durably) and, if the
	// pipeline forwards, its forwarder runs.
	Ready bool `json:"ready"`
	// Spool is "open", "closed" or "error: …".
	Spool string `json:"spool"`
	// Sink is the sink the forwarder delivers to now ("" while none is
	// reachable), "disabled" or "not running".
	Sink string `json:"sink"`
	// StartError is why the spool did not open or the forwarder did not
	// start.
	StartError string `json:"start_error,omitempty"`
}

// Status reports readiness.
func (p *Pipeline) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s Status
	switch {
	case p.spool != nil:
		s.Spool = "open"
	case p.startErr != nil:
		s.Spool = "error: " + p.startErr.Error()
	default:
		s.Spool = "closed"
	}
	switch {
	case p.opts.NewForwarder == nil:
		s.Sink = "disabled"
	case p.drain == nil:
		s.Sink = "not running"
	default:
		s.Sink = p.drain.ActiveSink()
	}
	if p.startErr != nil {
		s.StartError = p.startErr.Error()
	}
	s.Ready = !p.closed && p.spool != nil && (p.opts.NewForwarder == nil || p.drain != nil)
	return s
}

// Close stops the pipeline in order within ShutdownTimeout: inputs (the
// caller's, e.g. a process that appends), the forwarder's flush, the
// spool, the HTTP server (Shutdown).
func (p *Pipeline) Close(inputs ...Input) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.ShutdownTimeout)
	defer cancel()
	p.mu.Lock()
	p.closed = true
	st := Stages{Inputs: inputs, Drain: p.drain, HTTP: p.http}
	if p.spool != nil {
		st.Spool = p.spool
	}
	p.mu.Unlock()
	err := Shutdown(ctx, st)
	p.mu.Lock()
	p.spool, p.drain, p.http = nil, nil, nil
	p.mu.Unlock()
	return err
}
