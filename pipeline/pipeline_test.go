package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// fakeDrainer stands in for the forwarder in these unit tests: it records
// when its drain loop ends and whether the spool was still open then.
type fakeDrainer struct {
	sp        Spool
	stuck     bool // ignores its context, as a flush that never ends
	mu        *sync.Mutex
	order     *[]string
	openAtEnd bool
}

func (f *fakeDrainer) Run(ctx context.Context) error {
	<-ctx.Done()
	if f.stuck {
		select {}
	}
	_, err := f.sp.Append(context.Background(), record.Record{Kind: record.KindExaBGP, Payload: []byte("late")})
	f.mu.Lock()
	defer f.mu.Unlock()
	f.openAtEnd = err == nil
	*f.order = append(*f.order, "forwarder")
	return nil
}

func (f *fakeDrainer) ActiveSink() string { return "kafka" }

func testBuffer(t *testing.T) buffer.Config {
	b := buffer.DefaultConfig()
	b.Dir = filepath.Join(t.TempDir(), "spool")
	b.SegmentBytes = 1 << 20
	b.MaxBytes = 4 << 20
	return b
}

// TestPipelineReadinessAndShutdownOrder: /readyz answers 503 until the spool
// is open and the forwarder runs, then 200; Close stops the inputs first,
// then the forwarder (which still finds the spool open for its final
// flush), then the spool and the HTTP server.
func TestPipelineReadinessAndShutdownOrder(t *testing.T) {
	var (
		mu    sync.Mutex
		order []string
		fd    *fakeDrainer
	)
	addr := testenv.LoopbackAddr(t)
	p, err := New(Options{
		Buffer: testBuffer(t),
		NewForwarder: func(sp Spool, _ *slog.Logger, _ prometheus.Registerer) (Drainer, error) {
			fd = &fakeDrainer{sp: sp, mu: &mu, order: &order}
			return fd, nil
		},
		HTTP:            HTTPOptions{Listen: addr},
		ShutdownTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.StartHTTP(); err != nil {
		t.Fatal(err)
	}
	if code := testenv.HTTPStatus(t, addr, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before Open: %d", code)
	}
	if code := testenv.HTTPStatus(t, addr, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d", code)
	}
	sp, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := p.Open(); again != sp {
		t.Fatal("a second Open opened another spool")
	}
	st, err := testenv.ReadinessAt(addr)
	if err != nil || !st.Ready || st.Spool != "open" || st.Sink != "kafka" {
		t.Fatalf("/readyz after Open: %+v, %v", st, err)
	}
	if m := testenv.ScrapeMetrics(addr); len(m) == 0 || !slices.ContainsFunc(slices.Collect(maps.Keys(m)), func(k string) bool { return strings.HasPrefix(k, "bgpedge_buffer_") }) {
		t.Fatalf("/metrics lacks the spool's metrics: %v", m)
	}
	input := Input{Name: "source", Close: func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, "input")
		return nil
	}}
	if err := p.Close(input); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(order, []string{"input", "forwarder"}) || !fd.openAtEnd {
		t.Fatalf("shutdown order %v, spool open at the forwarder's end: %v", order, fd.openAtEnd)
	}
	if _, err := sp.Append(context.Background(), record.Record{Kind: record.KindExaBGP, Payload: []byte("x")}); err == nil {
		t.Fatal("spool still open after Close")
	}
	if _, err := p.Open(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Open after Close: %v", err)
	}
	if p.Status().Ready {
		t.Fatal("ready after Close")
	}
}

// TestPipelineBoundsAStuckFlush: a forwarder whose flush never ends holds
// Close no longer than the shutdown timeout, and the error says so.
func TestPipelineBoundsAStuckFlush(t *testing.T) {
	var mu sync.Mutex
	var order []string
	p, err := New(Options{
		Buffer: testBuffer(t),
		NewForwarder: func(sp Spool, _ *slog.Logger, _ prometheus.Registerer) (Drainer, error) {
			return &fakeDrainer{sp: sp, stuck: true, mu: &mu, order: &order}, nil
		},
		ShutdownTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Open(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = p.Close()
	if err == nil || !strings.Contains(err.Error(), "forwarder flush") {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > 300*time.Millisecond+CloseGrace {
		t.Fatalf("Close took %v", d)
	}
}

// TestPipelineForwarderFailureKeepsSpool: a forwarder that cannot be built
// leaves the spool taking records, and readiness says why it is not ready.
func TestPipelineForwarderFailureKeepsSpool(t *testing.T) {
	p, err := New(Options{
		Buffer: testBuffer(t),
		NewForwarder: func(Spool, *slog.Logger, prometheus.Registerer) (Drainer, error) {
			return nil, errors.New("no encoder")
		},
		ShutdownTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := p.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Append(context.Background(), record.Record{Kind: record.KindExaBGP, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	st := p.Status()
	if st.Ready || st.Sink != "not running" || !strings.Contains(st.StartError, "forwarder: no encoder") {
		t.Fatalf("status %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNewRejectsBadBuffer: the spool's settings are checked when the
// pipeline is configured, with the key named.
func TestNewRejectsBadBuffer(t *testing.T) {
	b := testBuffer(t)
	b.MaxBytes = b.SegmentBytes
	if _, err := New(Options{Buffer: b, ShutdownTimeout: time.Second}); err == nil || !strings.Contains(err.Error(), "buffer.max_bytes") {
		t.Fatalf("New: %v", err)
	}
}
