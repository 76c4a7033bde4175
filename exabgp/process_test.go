package exabgp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// memSpool is a fast in-memory spool for unit tests; gate, when set, holds
// every Append until it is closed.
type memSpool struct {
	mu   sync.Mutex
	recs []record.Record
	gate chan struct{}
	fail int // fail the next N appends
}

func (s *memSpool) Append(ctx context.Context, recs ...record.Record) (uint64, error) {
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return 0, errors.New("disk full")
	}
	first := uint64(len(s.recs) + 1)
	for i := range recs {
		recs[i].Seq = first + uint64(i)
		s.recs = append(s.recs, recs[i])
	}
	return first, nil
}

func (s *memSpool) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs)
}

var _ Spool = (*memSpool)(nil)

func testConfig(t *testing.T) Config {
	c := DefaultConfig()
	c.StateDir = t.TempDir()
	c.RefreshOnStart = false
	c.Commands.AckTimeout = 200 * time.Millisecond
	return c
}

func event(i int) string {
	return fmt.Sprintf(`{ "exabgp": "4.0.1", "type": "update", "neighbor": { "address": { "local": "127.0.0.3", "peer": "127.0.0.2" }, "asn": { "local": 1, "peer": 1 }, "direction": "receive", "message": { "update": { "announce": { "ipv4 unicast": { "192.0.2.1": [ { "nlri": "10.%d.%d.0/24" } ] } } } } } }`, i>>8&255, i&255)
}

// TestProcessSpoolsEventsNotAcks: events go to the spool in order, keyed by
// neighbor; acks and command output do not; EOF drains everything.
func TestProcessSpoolsEventsNotAcks(t *testing.T) {
	var in strings.Builder
	for i := range 1000 {
		in.WriteString(event(i) + "\n")
		if i%100 == 0 {
			in.WriteString("done\nexabgp 4.2.21\n\n")
		}
	}
	in.WriteString(strings.Repeat("x", 10)) // last line without newline
	sp := &memSpool{}
	reg := prometheus.NewRegistry()
	p, err := New(Options{Config: testConfig(t), AgentID: "a", OpenSpool: func() (Spool, error) { return sp, nil },
		In: strings.NewReader(in.String()), Out: io.Discard, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sp.len() != 1000 {
		t.Fatalf("spooled %d, want 1000", sp.len())
	}
	for i, r := range sp.recs {
		if string(r.Payload) != event(i) || string(r.Key) != "127.0.0.2" || r.Kind != record.KindExaBGP || r.Source != "exabgp" {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	if got := testutil.ToFloat64(p.m.lines.WithLabelValues("ack")); got != 10 {
		t.Errorf("acks %v", got)
	}
	if got := testutil.ToFloat64(p.m.lines.WithLabelValues("output")); got != 11 {
		t.Errorf("output lines %v", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("metrics lint: %v %v", err, problems)
	}
}

// TestProcessQueuePolicies: while the spool is stuck, the reader keeps
// reading until the queue is full; then block waits (nothing lost) and drop
// counts what it drops.
func TestProcessQueuePolicies(t *testing.T) {
	for _, policy := range []string{PolicyBlock, PolicyDrop} {
		t.Run(policy, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.QueueLines = 10
			cfg.BatchLines = 1
			cfg.QueuePolicy = policy
			pr, pw := io.Pipe()
			sp := &memSpool{gate: make(chan struct{})}
			p, err := New(Options{Config: cfg, OpenSpool: func() (Spool, error) { return sp, nil }, In: pr, Out: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- p.Run(context.Background()) }()
			wrote := make(chan int, 1)
			go func() {
				n := 0
				for i := range 50 {
					if _, err := io.WriteString(pw, event(i)+"\n"); err != nil {
						break
					}
					n++
				}
				wrote <- n
				pw.Close()
			}()
			if policy == PolicyDrop {
				// The reader never waits: all 50 lines are read while the spool is stuck.
				if n := <-wrote; n != 50 {
					t.Fatalf("wrote %d", n)
				}
				testenv.Eventually(t, 5*time.Second, "drops counted", func() bool {
					return testutil.ToFloat64(p.m.queueDropped) >= float64(50-cfg.QueueLines-1)
				})
			} else {
				testenv.Eventually(t, 5*time.Second, "queue full", func() bool { return len(p.queue) == cfg.QueueLines })
				select {
				case <-wrote:
					t.Fatal("writer finished although the queue is full: the reader did not block")
				default:
				}
			}
			close(sp.gate)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			want := 50
			if policy == PolicyDrop {
				want = 50 - int(testutil.ToFloat64(p.m.queueDropped))
			}
			if sp.len() != want {
				t.Fatalf("spooled %d, want %d", sp.len(), want)
			}
		})
	}
}

// TestProcessDegradedSpool: a spool that fails to open, then fails appends,
// is retried; the process keeps reading and nothing is lost.
func TestProcessDegradedSpool(t *testing.T) {
	sp := &memSpool{fail: 2}
	opens := 0
	open := func() (Spool, error) {
		opens++
		if opens < 3 {
			return nil, errors.New("permission denied")
		}
		return sp, nil
	}
	var in strings.Builder
	for i := range 20 {
		in.WriteString(event(i) + "\n")
	}
	p, err := New(Options{Config: testConfig(t), OpenSpool: open, In: strings.NewReader(in.String()), Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sp.len() != 20 || opens != 3 {
		t.Fatalf("spooled %d after %d opens", sp.len(), opens)
	}
	if got := testutil.ToFloat64(p.m.spoolErrors.WithLabelValues("append")); got != 2 {
		t.Fatalf("append errors %v", got)
	}
}

// TestCommanderAckMatching: done/error answer their command; a command that
// is never acked times out, and its late ack is not credited to the next one.
func TestCommanderAckMatching(t *testing.T) {
	m, _ := newMetrics(nil)
	pr, pw := io.Pipe()
	t.Cleanup(func() { pr.Close() })
	c := newCommander(pw, 100*time.Millisecond, m, discard())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.run(ctx)
	lateAck := make(chan struct{})
	go func() { // a fake exaBGP: answers each command it reads, by its text
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.Contains(line, "good"):
				c.onAck(AckDone)
			case strings.Contains(line, "bad"):
				c.onAck(AckError)
			case strings.Contains(line, "slow"):
				time.AfterFunc(150*time.Millisecond, func() { c.onAck(AckDone); close(lateAck) })
			}
		}
	}()
	tests := []struct{ line, want string }{
		{"announce good", ResultDone},
		{"announce bad", ResultError},
		{"announce slow", ResultTimeout},
		{"announce never", ResultTimeout}, // must not take slow's late ack
		{"announce good 2", ResultDone},
	}
	for _, tt := range tests {
		if r := c.Do(ctx, tt.line); r.result != tt.want {
			t.Errorf("%s: got %s (%s), want %s", tt.line, r.result, r.reason, tt.want)
		}
	}
	<-lateAck
	if got := testutil.ToFloat64(m.acks.WithLabelValues("late")); got != 1 {
		t.Errorf("late acks %v, want 1", got)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestProcessDrainsOnShutdown: on SIGTERM (ctx cancelled) while events wait
// in the queue, they are still appended before Run returns.
func TestProcessDrainsOnShutdown(t *testing.T) {
	cfg := testConfig(t)
	cfg.BatchLines = 7
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	sp := &memSpool{gate: make(chan struct{})}
	p, err := New(Options{Config: cfg, OpenSpool: func() (Spool, error) { return sp, nil }, In: pr, Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for i := range 100 {
		if _, err := io.WriteString(pw, event(i)+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 5*time.Second, "all lines read", func() bool {
		return testutil.ToFloat64(p.m.lines.WithLabelValues("event")) == 100
	})
	cancel()
	close(sp.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if sp.len() != 100 {
		t.Fatalf("spooled %d of 100 queued events at shutdown", sp.len())
	}
	for i, r := range sp.recs {
		if string(r.Payload) != event(i) {
			t.Fatalf("record %d out of order", i)
		}
	}
}
