package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HTTPOptions configure a pipeline's HTTP server.
type HTTPOptions struct {
	// Listen is host:port.
	Listen string
	// Pprof serves /debug/pprof/ on the same listener (SetPprof changes it).
	Pprof bool
	// Metrics is served on /metrics.
	Metrics prometheus.Gatherer
	// Ready answers /readyz: whether the pipeline is ready, and the status
	// document served as JSON (503 while not ready). Each command documents
	// what its readiness means.
	Ready func() (ready bool, status any)
	// Handlers are further routes, by http.ServeMux pattern ("GET /rib").
	Handlers map[string]http.Handler
}

// HTTPServer serves /metrics, /healthz, /readyz and, when enabled,
// /debug/pprof/. /healthz answers 200 while the process serves HTTP at all.
type HTTPServer struct {
	srv   *http.Server
	ln    net.Listener
	pprof atomic.Bool
	done  chan struct{}
}

// StartHTTP binds opts.Listen and serves until Close.
func StartHTTP(opts HTTPOptions, log *slog.Logger) (*HTTPServer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("http: listen: %w", err)
	}
	h := &HTTPServer{ln: ln, done: make(chan struct{})}
	h.pprof.Store(opts.Pprof)

	mux := http.NewServeMux()
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Metrics, promhttp.HandlerOpts{
			ErrorHandling:     promhttp.ContinueOnError,
			EnableOpenMetrics: true,
		}))
	}
	for pattern, h := range opts.Handlers {
		mux.Handle(pattern, h)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	if opts.Ready != nil {
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			ready, st := opts.Ready()
			w.Header().Set("Content-Type", "application/json")
			if !ready {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			_ = json.NewEncoder(w).Encode(st)
		})
	}
	pp := http.NewServeMux()
	pp.HandleFunc("/debug/pprof/", pprof.Index)
	pp.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
	pp.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/", func(w http.ResponseWriter, r *http.Request) {
		if !h.pprof.Load() {
			http.NotFound(w, r)
			return
		}
		pp.ServeHTTP(w, r)
	})

	h.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(h.done)
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	log.Info("http server started", "addr", ln.Addr().String(), "pprof", opts.Pprof)
	return h, nil
}

// SetPprof turns /debug/pprof/ on or off.
func (h *HTTPServer) SetPprof(on bool) { h.pprof.Store(on) }

// Addr is the bound address.
func (h *HTTPServer) Addr() string { return h.ln.Addr().String() }

// Close stops the server, letting in-flight requests finish until ctx ends.
func (h *HTTPServer) Close(ctx context.Context) error {
	err := h.srv.Shutdown(ctx)
	if err != nil {
		_ = h.srv.Close()
	}
	<-h.done
	if err != nil {
		return fmt.Errorf("http: shutdown: %w", err)
	}
	return nil
}
