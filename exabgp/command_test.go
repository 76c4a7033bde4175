package exabgp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

func testPolicy(t *testing.T) *Policy {
	t.Helper()
	p, err := NewPolicy(PolicyConfig{
		AllowedVerbs:      []string{VerbAnnounceRoute, VerbWithdrawRoute, VerbAnnounceFlow, VerbRouteRefresh},
		AllowedPrefixes:   []string{"100.100.0.0/16", "2001:db8::/32"},
		MaxPrefixLengthV4: 24, MaxPrefixLengthV6: 48,
		AllowedNeighbors: []string{"192.0.2.1", "2001:db8::1"},
		AllowedNextHops:  []string{"192.0.2.0/24", "self"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyCheck(t *testing.T) {
	med := uint32(10)
	rate := uint32(9600)
	nb := []string{"192.0.2.1"}
	tests := []struct {
		name   string
		req    Request
		line   string // want this command, or
		reject string // a rejection containing this
	}{
		{"announce with attributes", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "192.0.2.254", Origin: "igp",
			ASPath: []uint32{65001, 65002}, MED: &med, Communities: []string{"65001:1", "no-export"}, LargeCommunities: []string{"1:2:3"}, ExtCommunities: []string{"target:65001:100"}}},
			"neighbor 192.0.2.1 announce route 100.100.1.0/24 next-hop 192.0.2.254 origin igp as-path [ 65001 65002 ] med 10 community [ 65001:1 no-export ] large-community [ 1:2:3 ] extended-community [ target:65001:100 ]", ""},
		{"two neighbors, sorted", Request{Verb: VerbAnnounceRoute, Neighbors: []string{"2001:db8::1", "192.0.2.1"}, Route: &Route{Prefix: "2001:db8:1::/48", NextHop: "self"}},
			"neighbor 192.0.2.1, neighbor 2001:db8::1 announce route 2001:db8:1::/48 next-hop self", ""},
		{"withdraw", Request{Verb: VerbWithdrawRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24"}}, "neighbor 192.0.2.1 withdraw route 100.100.1.0/24", ""},
		{"flow", Request{Verb: VerbAnnounceFlow, Neighbors: nb, Flow: &Flow{Match: FlowMatch{Destination: "100.100.9.9/32", Protocol: []string{"udp"}, DestinationPort: []string{"=53", ">1024"}}, Then: FlowThen{RateLimit: &rate}}},
			"neighbor 192.0.2.1 announce flow route { match { destination 100.100.9.9/32; protocol udp; destination-port [ =53 >1024 ]; } then { rate-limit 9600; } }", ""},
		{"refresh", Request{Verb: VerbRouteRefresh, Neighbors: nb, Family: "ipv4 unicast"}, "neighbor 192.0.2.1 announce route-refresh ipv4 unicast", ""},
		{"verb not allowed", Request{Verb: VerbWithdrawFlow, Neighbors: nb}, "", "verb withdraw-flow not allowed"},
		{"unknown verb", Request{Verb: "shutdown", Neighbors: nb}, "", "unknown verb"},
		{"outside", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "10.0.0.0/24", NextHop: "192.0.2.254"}}, "", "outside the allowed prefixes"},
		{"covering prefix", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.0.0.0/8", NextHop: "192.0.2.254"}}, "", "outside the allowed prefixes"},
		{"too long", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/25", NextHop: "192.0.2.254"}}, "", "longer than /24"},
		{"host bits", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.1/24", NextHop: "192.0.2.254"}}, "", "host bits"},
		{"next hop", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "10.0.0.1"}}, "", "next hop 10.0.0.1 not allowed"},
		{"no next hop", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24"}}, "", "needs a next_hop"},
		{"neighbor", Request{Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.9"}, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "self"}}, "", "neighbor 192.0.2.9 not allowed"},
		{"selector required", Request{Verb: VerbAnnounceRoute, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "self"}}, "", "selector is required"},
		{"injection in community", Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "self", Communities: []string{"1:1 ]\nannounce route 0.0.0.0/0 next-hop self"}}}, "", "invalid community"},
		{"injection in flow", Request{Verb: VerbAnnounceFlow, Neighbors: nb, Flow: &Flow{Match: FlowMatch{Destination: "100.100.9.9/32", Protocol: []string{"udp; } then { discard"}}, Then: FlowThen{Discard: true}}}, "", "invalid flow protocol"},
		{"flow outside", Request{Verb: VerbAnnounceFlow, Neighbors: nb, Flow: &Flow{Match: FlowMatch{Source: "8.8.8.8/32"}, Then: FlowThen{Discard: true}}}, "", "outside the allowed prefixes"},
		{"flow without action", Request{Verb: VerbAnnounceFlow, Neighbors: nb, Flow: &Flow{Match: FlowMatch{Destination: "100.100.9.9/32"}}}, "", "at least one action"},
		{"refresh family", Request{Verb: VerbRouteRefresh, Neighbors: nb, Family: "ipv4\nunicast"}, "", "needs family"},
	}
	p := testPolicy(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := p.Check(&tt.req)
			if tt.reject != "" {
				if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tt.reject) {
					t.Fatalf("got %v, want rejection %q", err, tt.reject)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Line != tt.line {
				t.Fatalf("got  %q\nwant %q", c.Line, tt.line)
			}
			if strings.ContainsAny(c.Line, "\n\r") {
				t.Fatal("newline in command")
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"bad cidr", func(c *Config) { c.Policy.AllowedPrefixes = []string{"10.0.0.0/8", "2001:db8::/32", "10.0.0/8"} }, `exabgp.policy.allowed_prefixes[2]: invalid CIDR: netip.ParsePrefix("10.0.0/8")`},
		{"verb", func(c *Config) { c.Policy.AllowedVerbs = []string{"announce"} }, `exabgp.policy.allowed_verbs[0]: unknown verb "announce"`},
		{"queue policy", func(c *Config) { c.QueuePolicy = "spill" }, `exabgp.queue_policy: must be block or drop`},
		{"nats url", func(c *Config) { c.Commands.Enabled = true }, `exabgp.commands.nats.url: must be set`},
		{"neighbor", func(c *Config) { c.Policy.AllowedNeighbors = []string{"x"} }, `exabgp.policy.allowed_neighbors[0]: invalid address "x"`},
		{"refresh family", func(c *Config) { c.RefreshFamilies = []string{"ipv4"} }, `exabgp.refresh_families[0]`},
		{"max len", func(c *Config) { c.Policy.MaxPrefixLengthV4 = 33 }, `exabgp.policy.max_prefix_length_v4`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestJournalPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "routes.json")
	j, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"b", "a", "c"} {
		if err := j.Put(JournalEntry{Key: k, Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.1"}, Body: "announce route " + k}); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Delete("b"); err != nil {
		t.Fatal(err)
	}
	j2, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	es := j2.Entries()
	if len(es) != 2 || es[0].Key != "a" || es[1].Key != "c" || es[0].Line() != "neighbor 192.0.2.1 announce route a" {
		t.Fatalf("reloaded %+v", es)
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".*"))
	if len(matches) != 0 {
		t.Fatalf("temporary files left: %v", matches)
	}
}

// autoAck starts a commander whose fake exaBGP acks every command with done
// and records it.
func autoAck(t *testing.T) (*commander, *metrics, func() []string) {
	t.Helper()
	m, _ := newMetrics(nil)
	pr, pw := io.Pipe()
	c := newCommander(pw, time.Second, m, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); pr.Close() })
	go c.run(ctx)
	var mu sync.Mutex
	var seen []string
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			seen = append(seen, sc.Text())
			mu.Unlock()
			c.onAck(AckDone)
		}
	}()
	return c, m, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// TestServiceLimitsJournalReplay: max_routes and the rate limit reject;
// accepted announces are journaled; a replay re-checks the current policy.
func TestServiceLimitsJournalReplay(t *testing.T) {
	cmd, m, seen := autoAck(t)
	j, err := OpenJournal(filepath.Join(t.TempDir(), "routes.json"))
	if err != nil {
		t.Fatal(err)
	}
	svc := &service{policy: testPolicy(t), maxRoutes: 2, journal: j, cmd: cmd, limiter: rate.NewLimiter(rate.Every(time.Hour), 4), m: m, log: slog.New(slog.DiscardHandler)}
	ann := func(p string) Reply {
		return svc.handle(context.Background(), &Request{ID: p, Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.1"}, Route: &Route{Prefix: p, NextHop: "self"}})
	}
	steps := []struct {
		prefix, result, reason string
	}{
		{"100.100.1.0/24", ResultDone, ""},
		{"100.100.2.0/24", ResultDone, ""},
		{"100.100.1.0/24", ResultDone, ""}, // replaces: does not count against max_routes
		{"100.100.3.0/24", ResultRejected, "max_routes (2)"},
		{"10.0.0.0/24", ResultRejected, "outside"},
	}
	for _, s := range steps {
		r := ann(s.prefix)
		if r.Result != s.result || !strings.Contains(r.Reason, s.reason) {
			t.Fatalf("%s: %+v", s.prefix, r)
		}
	}
	// 3 accepted so far (burst 4): one more passes, then the rate limit bites.
	if r := svc.handle(context.Background(), &Request{Verb: VerbWithdrawRoute, Neighbors: []string{"192.0.2.1"}, Route: &Route{Prefix: "100.100.2.0/24"}}); r.Result != ResultDone {
		t.Fatalf("withdraw: %+v", r)
	}
	if r := ann("100.100.4.0/24"); r.Result != ResultRejected || !strings.Contains(r.Reason, "rate limit") {
		t.Fatalf("rate: %+v", r)
	}
	if l := svc.handle(context.Background(), &Request{Verb: VerbList}); l.Result != ResultOK || len(l.Routes) != 1 || l.Routes[0].Key != "192.0.2.1|route 100.100.1.0/24" {
		t.Fatalf("list: %+v", l)
	}
	if got := testutil.ToFloat64(m.commands.WithLabelValues(VerbAnnounceRoute, ResultRejected)); got != 3 {
		t.Fatalf("rejected count %v", got)
	}
	for reason, want := range map[string]float64{RejectMaxRoutes: 1, RejectPrefix: 1, RejectRate: 1} {
		if got := testutil.ToFloat64(m.rejected.WithLabelValues(reason)); got != want {
			t.Errorf("rejections with reason %s: %v, want %v", reason, got, want)
		}
	}

	before := len(seen())
	svc.replay(context.Background(), "192.0.2.1")
	if s := seen(); len(s) != before+1 || s[len(s)-1] != "neighbor 192.0.2.1 announce route 100.100.1.0/24 next-hop self" {
		t.Fatalf("replay wrote %q", s[before:])
	}
	// Narrow the policy: the journaled route is no longer allowed, so not replayed.
	narrow, err := NewPolicy(PolicyConfig{AllowedVerbs: []string{VerbAnnounceRoute}, AllowedPrefixes: []string{"100.100.200.0/24"},
		MaxPrefixLengthV4: 24, AllowedNeighbors: []string{"192.0.2.1"}, AllowedNextHops: []string{"self"}})
	if err != nil {
		t.Fatal(err)
	}
	svc.policy = narrow
	before = len(seen())
	svc.replay(context.Background(), "")
	if s := seen(); len(s) != before {
		t.Fatalf("replayed a route the policy no longer allows: %q", s[before:])
	}
}

// scriptedExaBGP is a fake exaBGP that answers each command by the prefix
// in it: done, error, or nothing (AckNone). The test can ack by hand.
type scriptedExaBGP struct {
	mu    sync.Mutex
	modes map[string]Ack
	lines []string
}

func (f *scriptedExaBGP) set(prefix string, a Ack) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.modes[prefix] = a
}

func (f *scriptedExaBGP) written() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func startScripted(t *testing.T, timeout time.Duration) (*scriptedExaBGP, *commander, *metrics) {
	t.Helper()
	m, _ := newMetrics(nil)
	pr, pw := io.Pipe()
	c := newCommander(pw, timeout, m, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); pr.Close() })
	go c.run(ctx)
	f := &scriptedExaBGP{modes: map[string]Ack{}}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			f.mu.Lock()
			f.lines = append(f.lines, line)
			a := AckNone
			for p, mode := range f.modes {
				if strings.Contains(line, " "+p+" ") {
					a = mode
				}
			}
			f.mu.Unlock()
			if a != AckNone {
				c.onAck(a)
			}
		}
	}()
	return f, c, m
}

// TestServicePendingJournal: an announce is journaled as pending before it
// is written to exaBGP; done confirms it (also when the ack comes late),
// error removes it (also late), a timeout keeps it pending: listed, counted
// against max_routes, persisted and replayed, and a replay acked done
// confirms it. Replays are counted by exaBGP's answer.
func TestServicePendingJournal(t *testing.T) {
	const ackTimeout = 300 * time.Millisecond
	f, cmd, m := startScripted(t, ackTimeout)
	path := filepath.Join(t.TempDir(), "routes.json")
	j, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	svc := &service{policy: testPolicy(t), maxRoutes: 4, journal: j, cmd: cmd, limiter: rate.NewLimiter(rate.Inf, 1), m: m, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	ann := func(p string) Reply {
		return svc.handle(ctx, &Request{ID: "id-" + p, Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.1"}, Route: &Route{Prefix: p, NextHop: "self"}})
	}
	key := func(p string) string { return "192.0.2.1|route " + p }
	state := func(p string) string {
		e, ok := j.Get(key(p))
		switch {
		case !ok:
			return "absent"
		case e.Pending:
			return "pending"
		}
		return "confirmed"
	}
	const (
		pA, pB, pC, pD, pE, pF = "100.100.1.0/24", "100.100.2.0/24", "100.100.3.0/24", "100.100.4.0/24", "100.100.5.0/24", "100.100.6.0/24"
	)
	f.set(pA, AckDone)
	f.set(pE, AckError)
	f.set(pF, AckDone)

	steps := []struct {
		prefix  string
		lateAck Ack // acked by hand during the ghost period after the timeout
		result  string
		want    string // journal state afterwards
	}{
		{pA, AckNone, ResultDone, "confirmed"},
		{pB, AckNone, ResultTimeout, "pending"}, // never acked
		{pC, AckDone, ResultTimeout, "confirmed"},
		{pD, AckError, ResultTimeout, "absent"},
		{pE, AckNone, ResultError, "absent"},
	}
	for _, s := range steps {
		r := ann(s.prefix)
		if r.Result != s.result {
			t.Fatalf("%s: %+v, want %s", s.prefix, r, s.result)
		}
		if r.Result == ResultTimeout && state(s.prefix) != "pending" {
			t.Fatalf("%s: timed out but journal says %s", s.prefix, state(s.prefix))
		}
		if s.lateAck != AckNone {
			cmd.onAck(s.lateAck)
		}
		testenv.Eventually(t, 5*time.Second, s.prefix+" "+s.want, func() bool { return state(s.prefix) == s.want })
	}
	if got := testutil.ToFloat64(m.acks.WithLabelValues("late")); got != 2 {
		t.Fatalf("late acks %v, want 2", got)
	}

	// B (pending) counts: A, B, C fill max_routes.
	svc.maxRoutes = 3
	if r := ann(pF); r.Result != ResultRejected || !strings.Contains(r.Reason, "max_routes (3)") {
		t.Fatalf("pending route not counted against max_routes: %+v", r)
	}
	l := svc.handle(ctx, &Request{Verb: VerbList})
	var listed []string
	for _, e := range l.Routes {
		listed = append(listed, e.Key+" pending="+map[bool]string{true: "yes", false: "no"}[e.Pending])
	}
	if want := []string{key(pA) + " pending=no", key(pB) + " pending=yes", key(pC) + " pending=no"}; strings.Join(listed, ";") != strings.Join(want, ";") {
		t.Fatalf("list %q, want %q", listed, want)
	}
	if b, _ := json.Marshal(l); !strings.Contains(string(b), `"pending":true`) {
		t.Fatalf("list reply does not mark pending: %s", b)
	}
	if got := testutil.ToFloat64(m.pending); got != 1 {
		t.Fatalf("pending gauge %v", got)
	}
	j2, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := j2.Get(key(pB)); !e.Pending {
		t.Fatalf("pending flag not persisted: %+v", e)
	}

	// A replay re-announces the pending route too; exaBGP acks it now.
	f.set(pB, AckDone)
	f.set(pC, AckError)
	before := len(f.written())
	svc.replay(ctx, "")
	if got := f.written()[before:]; len(got) != 3 || !strings.Contains(got[1], pB) {
		t.Fatalf("replay wrote %q", got)
	}
	if state(pB) != "confirmed" {
		t.Fatalf("replay acked done did not confirm the pending route: %s", state(pB))
	}
	if state(pC) != "confirmed" {
		t.Fatalf("a confirmed route must survive a replay error: %s", state(pC))
	}
	for res, want := range map[string]float64{ResultDone: 2, ResultError: 1, ResultTimeout: 0} {
		if got := testutil.ToFloat64(m.replayed.WithLabelValues(res)); got != want {
			t.Errorf("replayed{result=%q} %v, want %v", res, got, want)
		}
	}
	if got := testutil.ToFloat64(m.pending); got != 0 {
		t.Fatalf("pending gauge %v after confirmation", got)
	}
}

// TestJournalResolve: a late answer settles only the entry its command
// wrote, never a later command's entry for the same key.
func TestJournalResolve(t *testing.T) {
	j, err := OpenJournal(filepath.Join(t.TempDir(), "routes.json"))
	if err != nil {
		t.Fatal(err)
	}
	first := JournalEntry{Key: "k", Body: "announce route 100.100.1.0/24 next-hop self", RequestID: "1", Added: time.Unix(1, 0), Pending: true}
	second := first
	second.RequestID, second.Added = "2", time.Unix(2, 0)
	if err := j.Put(first); err != nil {
		t.Fatal(err)
	}
	if err := j.Put(second); err != nil {
		t.Fatal(err)
	}
	if changed, err := j.Resolve(first, nil); err != nil || changed {
		t.Fatalf("stale resolve changed the journal: %v %v", changed, err)
	}
	ok := second
	ok.Pending = false
	if changed, err := j.Resolve(second, &ok); err != nil || !changed {
		t.Fatalf("resolve: %v %v", changed, err)
	}
	if e, _ := j.Get("k"); e.Pending || e.RequestID != "2" {
		t.Fatalf("after resolve: %+v", e)
	}
}

// TestServiceShutdownKeepsPending: exaBGP answering "shutdown" leaves the
// outcome unknown, so the announce stays journaled as pending (replayed on
// the next start) instead of being removed as if exaBGP had said error.
func TestServiceShutdownKeepsPending(t *testing.T) {
	f, cmd, m := startScripted(t, 5*time.Second)
	j, err := OpenJournal(filepath.Join(t.TempDir(), "routes.json"))
	if err != nil {
		t.Fatal(err)
	}
	svc := &service{policy: testPolicy(t), maxRoutes: 4, journal: j, cmd: cmd, limiter: rate.NewLimiter(rate.Inf, 1), m: m, log: slog.New(slog.DiscardHandler)}
	const p = "100.100.7.0/24"
	f.set(p, AckShutdown)
	r := svc.handle(context.Background(), &Request{ID: "x", Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.1"}, Route: &Route{Prefix: p, NextHop: "self"}})
	if r.Result != ResultTimeout {
		t.Fatalf("reply %+v, want %s", r, ResultTimeout)
	}
	if e, ok := j.Get("192.0.2.1|route " + p); !ok || !e.Pending {
		t.Fatalf("journal entry %+v (present %v), want pending", e, ok)
	}
}
