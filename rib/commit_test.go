package rib

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// remapMmap is a first mapping so small (bbolt's minimum) that the first
// commits of a few thousand routes grow the file past it, and remap.
const remapMmap = 32 << 10

// TestStageCommitRemaps commits, between look-ups, batches that grow the
// file past its mapping: bbolt remaps the file in Tx.Commit, and a remap
// waits for every read transaction to end. Look-ups read the index, not
// the file, so no read transaction may be left open between them; if one
// were, the commit would wait forever.
func TestStageCommitRemaps(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Enabled = true
	s, err := Open(Options{Config: cfg, Dir: t.TempDir(), AgentID: testAgent, initialMmap: remapMmap})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// Each round doubles the routes held, so each commit outgrows the
	// mapping, which bbolt doubles.
	const n = 2000
	seq, held := uint64(0), 0
	for round := range 3 {
		for range n << round {
			seq++
			r := testRoute{router: "192.0.2.1", peer: "10.0.0.1", table: TableAdjInPre,
				prefix: fmt.Sprintf("10.%d.%d.0/24", held/256, held%256), attr: 1}
			held++
			err := s.Sequence(record.Record{Seq: seq, Kind: record.KindBMP}, []*forwarder.Outgoing{r.msg(t, seq, 1)},
				func(*forwarder.Outgoing) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
		}
		before := mappedBytes(t, s)
		done := make(chan error, 1)
		go func() { done <- s.CommitThrough(seq) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: commit stuck for 30 s: its remap waits for a read transaction", round)
		}
		if after := mappedBytes(t, s); after <= before {
			t.Fatalf("round %d: the file's mapping went from %d to %d bytes: no remap", round, before, after)
		}
	}
	if got := len(fileState(t, s)); got != held {
		t.Fatalf("file holds %d routes, want %d", got, held)
	}
}

// mappedBytes is the size of the process's mapping of the stage's file, as
// /proc/self/maps lists it (bbolt maps it once, read-only).
func mappedBytes(t *testing.T, s *Stage) int64 {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		skipOutsideCI(t, "no /proc/self/maps (%v): the remap cannot be observed", err)
	}
	path := s.st.db.Path()
	for line := range strings.Lines(string(maps)) {
		f := strings.Fields(line)
		if len(f) < 6 || f[5] != path {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("/proc/self/maps: %q", line)
		}
		return int64(b - a)
	}
	t.Fatalf("%s is not mapped", path)
	return 0
}

// TestStageCommitsWhileSequencing commits from another goroutine while
// routes are sequenced, as the forwarder's ack ticker does, on a file that
// starts with a 32 KiB mapping: commits grow it, remap it and so wait for
// the look-ups' read transactions to end. Nothing may hang, and the
// decisions must be those of the state as sequenced: a table sent again is
// all duplicates, a changed half of it is emitted.
func TestStageCommitsWhileSequencing(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Enabled = true
	s, err := Open(Options{Config: cfg, Dir: t.TempDir(), AgentID: testAgent, initialMmap: remapMmap})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const n = 12000
	routes := make([]testRoute, n)
	for i := range routes {
		routes[i] = testRoute{router: "192.0.2.1", peer: fmt.Sprintf("10.0.0.%d", 1+i%3), table: TableAdjInPre,
			prefix: fmt.Sprintf("10.%d.%d.0/24", i/256, i%256), attr: 1}
	}
	var sequenced atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var commitErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if err := s.CommitThrough(sequenced.Load()); err != nil {
				commitErr = err
				return
			}
		}
	}()

	seq := uint64(0)
	pass := func(attr func(i int) uint32) (emitted int) {
		for i, r := range routes {
			seq++
			r.attr = attr(i)
			m := r.msg(t, seq, 1)
			err := s.Sequence(record.Record{Seq: seq, Kind: record.KindBMP}, []*forwarder.Outgoing{m}, func(*forwarder.Outgoing) error {
				emitted++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			sequenced.Store(seq)
		}
		return emitted
	}
	deadline := time.AfterFunc(time.Minute, func() { panic("route state stuck: a commit and the look-ups wait for each other") })
	defer deadline.Stop()

	// New routes: the event and its bmp.rib message each.
	if got := pass(func(int) uint32 { return 1 }); got != 2*n {
		t.Fatalf("first table: %d messages, want %d", got, 2*n)
	}
	// The same table again: all duplicates, dropped.
	if got := pass(func(int) uint32 { return 1 }); got != 0 {
		t.Fatalf("table re-sent unchanged: %d messages, want 0", got)
	}
	// Every other route changed.
	if got := pass(func(i int) uint32 { return 1 + uint32(i%2) }); got != n {
		t.Fatalf("half the table changed: %d messages, want %d", got, n)
	}
	close(stop)
	wg.Wait()
	if commitErr != nil {
		t.Fatal(commitErr)
	}
	if err := s.CommitThrough(seq); err != nil {
		t.Fatal(err)
	}
	if got := len(fileState(t, s)); got != n {
		t.Fatalf("file holds %d routes, want %d", got, n)
	}
	if got := mappedBytes(t, s); got <= remapMmap {
		t.Fatalf("the file's mapping is %d bytes: the commits never remapped it", got)
	}
	if got := testutilGauge(s.m.routes); got != n {
		t.Fatalf("bgpedge_rib_routes %v, want %d", got, n)
	}
}

// TestOpenAddressSpaceLimited opens the state with too little address
// space left for its first mapping (ulimit -v): it must still open,
// mapping only what the file needs, and work.
func TestOpenAddressSpaceLimited(t *testing.T) {
	if strconv.IntSize != 64 {
		t.Skip("the first mapping is large on 64-bit systems only")
	}
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		skipOutsideCI(t, "no /proc/self/status (%v)", err)
	}
	var vmKiB uint64
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, "VmSize:"); ok {
			vmKiB, _ = strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	if vmKiB == 0 {
		t.Fatal("no VmSize in /proc/self/status")
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_AS, &old); err != nil {
		t.Fatal(err)
	}
	// Room for the test's own growth, not for the first mapping.
	lim := vmKiB<<10 + initialMmap/4
	if old.Max < lim {
		skipOutsideCI(t, "address space already limited to %d bytes", old.Max)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: lim, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_AS, &old); err != nil {
				t.Error(err)
			}
		}
	}
	defer restore()

	s := openTest(t, t.TempDir(), DuplicatesDrop)
	restore()
	defer s.Close()
	if got := mappedBytes(t, s); got >= initialMmap {
		t.Fatalf("mapped %d bytes under a limit of %d", got, lim)
	}
	sequence(t, s, 1, []*forwarder.Outgoing{testRoute{router: "192.0.2.1", peer: "10.0.0.1", table: TableAdjInPre, prefix: "10.0.0.0/8", attr: 1}.msg(t, 1, 1)})
	if err := s.CommitThrough(1); err != nil {
		t.Fatal(err)
	}
	if got := len(fileState(t, s)); got != 1 {
		t.Fatalf("file holds %d routes, want 1", got)
	}
}

// skipOutsideCI skips for a host that cannot show what the test checks (no
// /proc, an address space already limited), and fails in CI, where the
// host must be able to.
func skipOutsideCI(t *testing.T, format string, args ...any) {
	t.Helper()
	if testenv.InCI() {
		t.Fatalf(format+" (CI is set: the test must run here)", args...)
	}
	t.Skipf(format, args...)
}
