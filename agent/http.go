package agent

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

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpServer serves /metrics, /healthz, /readyz and, when enabled, /debug/pprof/.
type httpServer struct {
	srv   *http.Server
	ln    net.Listener
	pprof atomic.Bool
	done  chan struct{}
}

// statusSource is what the HTTP handlers need from the agent.
type statusSource interface {
	Status() Status
	gatherers() (metrics http.Handler)
	ribHandler() http.Handler
}

func (a *Agent) gatherers() http.Handler {
	return promhttp.HandlerFor(a.Gatherer(), promhttp.HandlerOpts{
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

func startHTTP(cfg HTTPConfig, src statusSource, log *slog.Logger) (*httpServer, error) {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("http: listen: %w", err)
	}
	h := &httpServer{ln: ln, done: make(chan struct{})}
	h.pprof.Store(cfg.Pprof)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", src.gatherers())
	mux.Handle("GET /rib", src.ribHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		st := src.Status()
		w.Header().Set("Content-Type", "application/json")
		if !st.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(st)
	})
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
	log.Info("http server started", "addr", ln.Addr().String(), "pprof", cfg.Pprof)
	return h, nil
}

func (h *httpServer) setPprof(on bool) { h.pprof.Store(on) }

// Addr is the bound address.
func (h *httpServer) Addr() string { return h.ln.Addr().String() }

// Close stops the server, letting in-flight requests finish until ctx ends.
func (h *httpServer) Close(ctx context.Context) error {
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
