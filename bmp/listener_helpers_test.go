package bmp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// memSpool is an in-memory Spool for fast unit tests. It copies what it is
// given, as the real spool does, and can be made to fail or block.
type memSpool struct {
	mu      sync.Mutex
	recs    []record.Record
	appends int
	// fail, if set, is consulted before each append; a non-nil error fails it.
	fail func() error
	// gate, if set, is received from before each append (blocks while empty).
	gate chan struct{}
	// attempts counts Append calls, including blocked and failed ones.
	attempts atomic.Int64
	// holdSynthetic, if set, is received from before an append that holds
	// a synthetic peer-down.
	holdSynthetic chan struct{}
}

var _ Spool = (*memSpool)(nil)

func (m *memSpool) Append(ctx context.Context, recs ...record.Record) (uint64, error) {
	m.attempts.Add(1)
	if m.holdSynthetic != nil && slices.ContainsFunc(recs, func(r record.Record) bool { return r.Kind == record.KindBMPSyntheticPeerDown }) {
		select {
		case <-m.holdSynthetic:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if m.gate != nil {
		select {
		case <-m.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		if err := m.fail(); err != nil {
			return 0, err
		}
	}
	first := uint64(len(m.recs)) + 1
	for _, r := range recs {
		r.Key = bytes.Clone(r.Key)
		r.Payload = bytes.Clone(r.Payload)
		r.Seq = uint64(len(m.recs)) + 1
		m.recs = append(m.recs, r)
	}
	m.appends++
	return first, nil
}

func (m *memSpool) snapshot() []record.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]record.Record(nil), m.recs...)
}

func (m *memSpool) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

// bySource returns the payloads of KindBMP records from one source.
func bySource(recs []record.Record, source string) [][]byte {
	var out [][]byte
	for _, r := range recs {
		if r.Kind == record.KindBMP && r.Source == source {
			out = append(out, r.Payload)
		}
	}
	return out
}

type testStation struct {
	l     *Listener
	spool *memSpool
	reg   *prometheus.Registry
	addr  string
}

func startStation(t testing.TB, spool *memSpool, mutate func(*Config)) *testStation {
	t.Helper()
	st := startListener(t, spool, mutate)
	st.spool = spool
	return st
}

// startListener starts a listener on an ephemeral loopback port over any
// spool, logging to the test.
func startListener(t testing.TB, spool Spool, mutate func(*Config)) *testStation {
	t.Helper()
	return startLoggedStation(t, spool, testWriter{t}, mutate)
}

// startLoggedStation is startListener with the station's log written to w.
func startLoggedStation(t testing.TB, spool Spool, w io.Writer, mutate func(*Config)) *testStation {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	l, err := NewListener(cfg, spool, slog.New(slog.NewTextHandler(w, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &testStation{l: l, reg: reg, addr: l.Addr().String()}
}

// metric returns the value of a counter or gauge, 0 if absent. labels are name, value pairs.
func (s *testStation) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return gatherValue(t, s.reg, name, labels...)
}

func gatherValue(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
		return sum
	}
	return 0
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// dialFrom connects to addr from a given loopback source IP ("" for any).
func dialFrom(t testing.TB, addr, src string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// awaitStationClose reads until the station closes the connection.
func awaitStationClose(t testing.TB, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [64]byte
	for {
		_, err := c.Read(b[:])
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("station did not close the connection")
		}
		return
	}
}

// Messages built for tests.

func bmpMsg(typ MsgType, body []byte) []byte {
	b := make([]byte, HeaderLen, HeaderLen+len(body))
	b[0] = 3
	binary.BigEndian.PutUint32(b[1:5], uint32(HeaderLen+len(body)))
	b[5] = byte(typ)
	return append(b, body...)
}

// peerHeader builds a per-peer header for a global IPv4 peer 192.0.2.<n>.
func peerHeader(n byte) []byte {
	h := make([]byte, PerPeerHeaderLen)
	h[0] = PeerTypeGlobal
	copy(h[22:26], []byte{192, 0, 2, n})
	binary.BigEndian.PutUint32(h[26:30], 65000+uint32(n))
	copy(h[30:34], []byte{10, 0, 0, n})
	binary.BigEndian.PutUint32(h[34:38], 1700000000)
	return h
}

func initiation() []byte { return bmpMsg(MsgInitiation, []byte{0, 2, 0, 4, 't', 'e', 's', 't'}) }

func peerUp(n byte) []byte {
	return bmpMsg(MsgPeerUp, append(peerHeader(n), make([]byte, 20)...))
}

func peerDown(n byte) []byte { return bmpMsg(MsgPeerDown, append(peerHeader(n), 2)) }

func routeMonitoring(n byte, i int) []byte {
	body := append(peerHeader(n), make([]byte, 8+i%32)...)
	binary.BigEndian.PutUint32(body[len(body)-4:], uint32(i))
	return bmpMsg(MsgRouteMonitoring, body)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// openRealSpool opens a buffer spool in a temporary directory, closed at cleanup.
func openRealSpool(t testing.TB) *buffer.Spool {
	t.Helper()
	sp, err := buffer.Open(buffer.Options{
		Dir:        t.TempDir(),
		Logger:     slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Errorf("spool close: %v", err)
		}
	})
	return sp
}

// readAllRecords reads every record the spool holds, in seq order.
func readAllRecords(t testing.TB, sp *buffer.Spool) []record.Record {
	t.Helper()
	last := sp.Stats().LastSeq
	var out []record.Record
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for next := uint64(1); next <= last; {
		recs, err := sp.Read(ctx, next, 10000)
		if err != nil {
			t.Fatalf("spool read from %d: %v", next, err)
		}
		for _, r := range recs {
			if r.Seq != next {
				t.Fatalf("spool returned seq %d, want %d", r.Seq, next)
			}
			next++
		}
		out = append(out, recs...)
	}
	return out
}

// countTypes counts KindBMP records by BMP message type.
func countTypes(recs []record.Record) map[int]int {
	got := map[int]int{}
	for _, r := range recs {
		if r.Kind == record.KindBMP {
			got[int(r.Payload[5])]++
		}
	}
	return got
}
