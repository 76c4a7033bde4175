package rib

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
)

// TestStageCommitsWhileSequencing commits from another goroutine while
// routes are sequenced, as the forwarder's ack ticker does, on a file that
// starts with a 32 KiB mapping: commits grow it, remap it and so wait for
// the look-ups' shared read transaction to end. Nothing may hang, and the
// decisions must be those of the state as sequenced: a table sent again is
// all duplicates, a changed half of it is emitted.
func TestStageCommitsWhileSequencing(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Enabled = true
	s, err := Open(Options{Config: cfg, Dir: t.TempDir(), AgentID: testAgent, initialMmap: 32 << 10})
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
	deadline := time.AfterFunc(3*time.Minute, func() { panic("route state stuck: a commit and the look-ups wait for each other") })
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
	if got := testutilGauge(s.m.routes); got != n {
		t.Fatalf("bgpedge_rib_routes %v, want %d", got, n)
	}
}
