package exabgp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
			reg := prometheus.NewRegistry()
			logs := &testenv.LogBuffer{}
			out := &countingWriter{}
			p, err := New(Options{Config: cfg, OpenSpool: func() (Spool, error) { return sp, nil }, In: pr, Out: out,
				Registerer: reg, Logger: slog.New(slog.NewTextHandler(logs, nil))})
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
				if !strings.Contains(logs.String(), "queue full") || !strings.Contains(logs.String(), "neighbor=127.0.0.2") {
					t.Errorf("drops not logged with their neighbor:\n%s", logs)
				}
			} else {
				testenv.Eventually(t, 5*time.Second, "queue full", func() bool { return len(p.queue) == cfg.QueueLines })
				select {
				case <-wrote:
					t.Fatal("writer finished although the queue is full: the reader did not block")
				default:
				}
				// While the spool is stuck the gauges move: the queue plus
				// the batch held in Append, and the reader's blocked time.
				// The gauge follows the queue a moment after the batch
				// handler takes its line into Append: polled, not read once.
				if ok, last := testenv.Poll(5*time.Second, func() (bool, string) {
					got := gathered(t, reg, "bgpedge_exabgp_queue_lines")
					return got == float64(cfg.QueueLines+1), fmt.Sprint(got)
				}); !ok {
					t.Errorf("queue_lines %s while stuck, want %d", last, cfg.QueueLines+1)
				}
				testenv.Eventually(t, 5*time.Second, "blocked time counted during the stall", func() bool {
					return testutil.ToFloat64(p.m.readerBlocked) >= 1
				})
				// Acks are read by the blocked reader: a command now waits
				// for the stall to end, and is not written if its caller
				// gives up first.
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				r := p.cmd.Do(ctx, "announce route 10.0.0.0/24 next-hop self")
				cancel()
				if r.result != ResultTimeout {
					t.Errorf("command during the stall: %+v", r)
				}
				if n := out.writes.Load(); n != 0 {
					t.Errorf("%d writes to exabgp during the stall", n)
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
			if got := gathered(t, reg, "bgpedge_exabgp_queue_lines"); got != 0 {
				t.Errorf("queue_lines %v after the drain", got)
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
	c := newCommander(pw, 300*time.Millisecond, m, discard())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.run(ctx)
	lateAck := make(chan struct{})
	slowTimedOut := make(chan struct{})
	go func() { // a fake exaBGP: answers each command it reads, by its text
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			switch line := sc.Text(); {
			case strings.Contains(line, "good"):
				c.onAck(AckDone)
			case strings.Contains(line, "bad"):
				c.onAck(AckError)
			case strings.Contains(line, "slow"):
				// Answered once the command has timed out: inside its ghost period.
				go func() { <-slowTimedOut; c.onAck(AckDone); close(lateAck) }()
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
		if tt.line == "announce slow" {
			close(slowTimedOut)
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

// TestProcessJournalFaults: a journal of injected routes that cannot be used
// costs route commands at most, never an event. One that does not decode is
// set aside whole and replaced by an empty one; one that cannot be read turns
// commands off for the run.
func TestProcessJournalFaults(t *testing.T) {
	for _, tc := range []struct {
		reason   string
		plant    func(t *testing.T, path string)
		commands bool
	}{
		{"corrupt", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(`{"version":1,"entries":[{"key":`), 0o640); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"unreadable", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o750); err != nil { // read fails even as root
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Commands.Enabled = true
			cfg.Commands.NATS.URL = "nats://127.0.0.1:1" // never dialled: Run below is without commands
			tc.plant(t, cfg.JournalPath())
			var in strings.Builder
			for i := range 20 {
				in.WriteString(event(i) + "\n")
			}
			sp := &memSpool{}
			logs := &testenv.LogBuffer{}
			p, err := New(Options{Config: cfg, OpenSpool: func() (Spool, error) { return sp, nil },
				In: strings.NewReader(in.String()), Out: io.Discard, Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatalf("New must not fail on a bad journal: %v", err)
			}
			if p.commands != tc.commands {
				t.Errorf("commands %v, want %v", p.commands, tc.commands)
			}
			if got := testutil.ToFloat64(p.m.journalFaults.WithLabelValues(tc.reason)); got != 1 {
				t.Errorf("journal faults{%s} = %v, want 1", tc.reason, got)
			}
			if !strings.Contains(logs.String(), cfg.JournalPath()) {
				t.Errorf("log does not name the journal:\n%s", logs)
			}
			p.commands = false // no NATS here; ingest is what is checked
			if err := p.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			if sp.len() != 20 {
				t.Fatalf("spooled %d events, want 20", sp.len())
			}
			if tc.reason != "corrupt" {
				return
			}
			aside, _ := filepath.Glob(cfg.JournalPath() + ".corrupt-*")
			if len(aside) != 1 {
				t.Fatalf("set-aside copies: %v", aside)
			}
			if b, _ := os.ReadFile(aside[0]); !strings.HasPrefix(string(b), `{"version":1`) {
				t.Errorf("set-aside copy holds %q", b)
			}
			if err := p.journal.Put(JournalEntry{Key: "k", Body: "announce route 10.0.0.0/24 next-hop self"}); err != nil {
				t.Fatal(err)
			}
			if j, err := OpenJournal(cfg.JournalPath()); err != nil || j.Len() != 1 {
				t.Fatalf("fresh journal: %v, %v", j, err)
			}
		})
	}
}

// gathered is the value of the unlabelled metric name in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}

// TestProcessReplaysEveryNeighborUp: each neighbor whose session comes up
// gets the journaled routes, however many come up while replays are still
// being answered; a "state up" with an address that is not one is ignored.
func TestProcessReplaysEveryNeighborUp(t *testing.T) {
	const neighbors = 150
	cfg := testConfig(t)
	cfg.Commands.AckTimeout = 5 * time.Second // every command is acked; a timeout is a failure
	j, err := OpenJournal(cfg.JournalPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Put(JournalEntry{Key: "|route 100.100.1.0/24", Verb: VerbAnnounceRoute, Body: "announce route 100.100.1.0/24 next-hop self"}); err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	p, err := New(Options{Config: cfg, OpenSpool: func() (Spool, error) { return &memSpool{}, nil }, In: inR, Out: outW})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()

	// exaBGP: every command is answered, but not before every session has
	// come up, so all of them come up while the start-up replay still waits.
	replayed := make(chan string, 2*neighbors)
	release := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			replayed <- sc.Text()
			<-release
			if _, err := io.WriteString(inW, "done\n"); err != nil {
				return
			}
		}
	}()
	if got := <-replayed; got != "announce route 100.100.1.0/24 next-hop self" {
		t.Fatalf("start-up replay wrote %q", got)
	}
	up := func(addr string) string {
		return `{ "exabgp": "4.0.1", "type": "state", "neighbor": { "address": { "local": "127.0.0.1", "peer": "` + addr + `" }, "asn": { "local": 1, "peer": 2 }, "state": "up" } }` + "\n"
	}
	if _, err := io.WriteString(inW, up("not-an-address announce route 0.0.0.0/0 next-hop self\\n")); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range neighbors {
		addr := fmt.Sprintf("10.0.%d.%d", i/200, i%200+1)
		want["neighbor "+addr+" announce route 100.100.1.0/24 next-hop self"] = true
		if _, err := io.WriteString(inW, up(addr)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "every state up read", func() bool {
		return testutil.ToFloat64(p.m.lines.WithLabelValues("event")) == neighbors+1
	})
	close(release)
	deadline := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case line := <-replayed:
			if !want[line] {
				t.Fatalf("unexpected command %q", line)
			}
			delete(want, line)
		case <-deadline:
			t.Fatalf("%d neighbors never got their replay", len(want))
		}
	}
	inW.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	outW.Close()
}

// TestProcessShutdownStuckWriter: exaBGP that stops reading our commands
// cannot hold shutdown: the blocked writer is left behind after its grace.
func TestProcessShutdownStuckWriter(t *testing.T) {
	inR, inW := io.Pipe()
	defer inW.Close()
	_, outW := io.Pipe() // nobody reads: every write blocks
	defer outW.Close()
	out := &enteredWriter{w: outW, entered: make(chan struct{})}
	p, err := New(Options{Config: testConfig(t), OpenSpool: func() (Spool, error) { return &memSpool{}, nil }, In: inR, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	p.writerGrace = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	res := make(chan cmdResult, 1)
	go func() { res <- p.cmd.Do(ctx, "announce route 10.0.0.0/24 next-hop self") }()
	<-out.entered // the writer is blocked in its write
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return: shutdown waits on a write exaBGP never reads")
	}
	if r := <-res; r.result != ResultTimeout {
		t.Errorf("command %+v, want a timeout (outcome unknown)", r)
	}
}

// countingWriter discards what is written and counts the writes.
type countingWriter struct{ writes atomic.Int64 }

func (w *countingWriter) Write(b []byte) (int, error) {
	w.writes.Add(1)
	return len(b), nil
}

// enteredWriter closes entered when the first Write begins.
type enteredWriter struct {
	w       io.Writer
	once    sync.Once
	entered chan struct{}
}

func (e *enteredWriter) Write(b []byte) (int, error) {
	e.once.Do(func() { close(e.entered) })
	return e.w.Write(b)
}
