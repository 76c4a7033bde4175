package rib

import (
	"fmt"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// openBounded opens a stage with small commit and overlay bounds.
func openBounded(t *testing.T, dir string, commitOps, overlayOps int, beforeWrite func()) *Stage {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Enabled = true
	s, err := Open(Options{Config: cfg, Dir: dir, AgentID: testAgent, maxCommitOps: commitOps, maxOverlayOps: overlayOps, beforeWrite: beforeWrite})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// threeRoutes is record seq's messages: three new routes of one peer.
func threeRoutes(t *testing.T, seq uint64) []*forwarder.Outgoing {
	var msgs []*forwarder.Outgoing
	for i := range 3 {
		r := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre,
			prefix: fmt.Sprintf("10.%d.%d.0/24", seq/256, seq%256), pathID: uint32(i), attr: 1}
		msgs = append(msgs, r.msg(t, seq, i+1))
	}
	return msgs
}

// TestStageCommitInParts: a commit of more changes than maxCommitOps writes
// them in several transactions, each ending at a record boundary, so a
// crash after any part leaves the file with every change of the records up
// to its applied seq and none after it.
func TestStageCommitInParts(t *testing.T) {
	dir := t.TempDir()
	s := openBounded(t, dir, 10, 0, nil)
	const records = 100 // 300 changes: parts of 12 (4 records; 10 would cut one)
	for seq := uint64(1); seq <= records; seq++ {
		sequence(t, s, seq, threeRoutes(t, seq))
	}
	// One part, then a crash.
	if done, err := s.commitPart(records); err != nil || done {
		t.Fatalf("first part: done %v, err %v; want one part of several", done, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openBounded(t, dir, 10, 0, nil)
	applied, err := s.st.applied()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(fileState(t, s)); applied != 4 || got != 12 {
		t.Fatalf("after one part: applied %d with %d routes in the file, want 4 records and their 12 routes", applied, got)
	}
	// The records after applied come again (the spool's ack did not pass
	// them) and are new: nothing of theirs is in the file.
	for seq := applied + 1; seq <= records; seq++ {
		if got := sequence(t, s, seq, threeRoutes(t, seq)); len(got) != 6 {
			t.Fatalf("record %d after the crash: got %q, want 3 routes and their bmp.rib values", seq, summary(got))
		}
	}
	if err := s.CommitThrough(records); err != nil {
		t.Fatal(err)
	}
	if want := uint64((records - applied + 3) / 4); s.parts != want {
		t.Errorf("commit of %d records in %d transactions, want %d", records-applied, s.parts, want)
	}
	if got := len(fileState(t, s)); got != 3*records || s.applied != records || len(s.ops) != 0 {
		t.Errorf("after the whole commit: %d routes in the file, applied %d, %d changes left in the overlay; want %d, %d, 0",
			got, s.applied, len(s.ops), 3*records, records)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestStageOverlayBackpressure: over maxOverlayOps changes, Sequence waits
// for a running commit to end before it decides the next record; with no
// commit running it does not wait (the commit it would wait for may need
// records the forwarder sends only after this one).
func TestStageOverlayBackpressure(t *testing.T) {
	release := make(chan struct{})
	inWrite := make(chan struct{}, 1)
	blocking := false
	s := openBounded(t, t.TempDir(), 0, 30, func() {
		if blocking {
			inWrite <- struct{}{}
			<-release
		}
	})
	defer s.Close()
	for seq := uint64(1); seq <= 20; seq++ { // 60 changes, over the bound
		sequence(t, s, seq, threeRoutes(t, seq))
	}
	if s.waits != 0 {
		t.Fatalf("Sequence waited %d times with no commit running", s.waits)
	}
	blocking = true
	commitErr := make(chan error, 1)
	go func() { commitErr <- s.CommitThrough(5) }()
	<-inWrite
	seqDone := make(chan []*forwarder.Outgoing, 1)
	go func() {
		var out []*forwarder.Outgoing
		err := s.Sequence(record.Record{Seq: 21, Kind: record.KindBMP}, threeRoutes(t, 21), func(m *forwarder.Outgoing) error {
			out = append(out, m)
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		seqDone <- out
	}()
	testenv.Eventually(t, 10*time.Second, "Sequence waits for the running commit", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waits > 0
	})
	select {
	case <-seqDone:
		t.Fatal("Sequence decided a record while the overlay was over its bound and a commit ran")
	case <-time.After(50 * time.Millisecond): // still waiting, and long enough to be counted
	}
	close(release)
	if err := <-commitErr; err != nil {
		t.Fatal(err)
	}
	if got := <-seqDone; len(got) != 6 {
		t.Fatalf("record 21 after the commit: got %q", summary(got))
	}
	if w := testutilCounter(s.m.waitTime); w < 0.05 {
		t.Errorf("bgpedge_rib_sequence_wait_seconds_total %v after a wait of at least 0.05 s", w)
	}
	s.mu.Lock()
	left := len(s.ops)
	s.mu.Unlock()
	if left != 48 { // records 6..21
		t.Errorf("overlay holds %d changes after committing records ≤ 5, want 48", left)
	}
}

// TestStageCommitPartsSizedByPages: without a fixed part size, a commit
// part takes as many changes as the previous part's pages per change
// predict fit in maxCommitNodes: routes in key order share pages, so parts
// grow past maxCommitNodes changes (up to the overlay's bound), and never
// shrink below minCommitOps.
func TestStageCommitPartsSizedByPages(t *testing.T) {
	s := openBounded(t, t.TempDir(), 0, 0, nil)
	defer s.Close()
	if s.partOps != maxCommitNodes {
		t.Fatalf("first part size %d, want %d", s.partOps, maxCommitNodes)
	}
	const records = 3000 // 9,000 routes in key order: a few hundred pages
	for seq := uint64(1); seq <= records; seq++ {
		sequence(t, s, seq, threeRoutes(t, seq))
	}
	if err := s.CommitThrough(records); err != nil {
		t.Fatal(err)
	}
	if s.parts < 2 {
		t.Fatalf("9,000 changes committed in %d part, want the first cut at about %d", s.parts, maxCommitNodes)
	}
	t.Logf("%d parts, next part %d changes", s.parts, s.partOps)
	if s.partOps <= maxCommitNodes || s.partOps > maxOverlayOps {
		t.Errorf("part size after commits of routes sharing pages: %d, want more than %d and at most %d", s.partOps, maxCommitNodes, maxOverlayOps)
	}
	if got := len(fileState(t, s)); got != 3*records {
		t.Errorf("file holds %d routes, want %d", got, 3*records)
	}
}

// staleRoute is route i of staleTable's peer.
func staleRoute(i int) testRoute {
	return testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, prefix: fmt.Sprintf("10.%d.%d.0/24", i/256, i%256), attr: 1}
}

// staleTable sequences n routes of one peer (staleRoute), one a record,
// then a synthetic peer-down that makes them stale; it returns the last seq.
func staleTable(t *testing.T, s *Stage, n int) uint64 {
	t.Helper()
	seq := uint64(0)
	for i := range n {
		seq++
		sequence(t, s, seq, []*forwarder.Outgoing{staleRoute(i).msg(t, seq, 1)})
	}
	seq++
	rec, msgs := staleRoute(0).synthDown(t, seq)
	sequenceRec(t, s, rec, msgs)
	return seq
}

// TestStageTimeoutSweepDeletesBucket: a stale timeout of a peer none of
// whose routes came back deletes the peer's bucket (no walk materialising
// its pages); with one route confirmed it walks, and keeps that route.
func TestStageTimeoutSweepDeletesBucket(t *testing.T) {
	for _, confirm := range []bool{false, true} {
		t.Run(fmt.Sprintf("confirmed=%v", confirm), func(t *testing.T) {
			s := openTest(t, t.TempDir(), DuplicatesDrop)
			defer s.Close()
			const n = 2000
			seq := staleTable(t, s, n)
			if confirm {
				seq++
				sequence(t, s, seq, []*forwarder.Outgoing{staleRoute(7).msg(t, seq, 1)})
			}
			if err := s.CommitThrough(seq); err != nil {
				t.Fatal(err)
			}
			meta, err := s.meta(staleRoute(0).peerKey())
			if err != nil {
				t.Fatal(err)
			}
			seq++
			got := sequenceRec(t, s, record.Record{Seq: seq, Kind: record.KindRIBTimer, Payload: timerPayload(staleRoute(0).peerKey(), meta.epoch)}, nil)
			want := n
			if confirm {
				want = n - 1
			}
			if len(got) != 2*want {
				t.Fatalf("timer: %d messages, want %d withdraws and their tombstones", len(got), want)
			}
			if err := s.CommitThrough(seq); err != nil {
				t.Fatal(err)
			}
			file := fileState(t, s)
			if confirm != (len(file) == 1) || (!confirm && len(file) != 0) {
				t.Fatalf("file after the timeout holds %d routes, want %d", len(file), boolU(confirm))
			}
			if confirm {
				return
			}
			err = s.st.db.View(func(tx *bolt.Tx) error {
				if tx.Bucket(routesBucket).Bucket([]byte(staleRoute(0).peerKey())) != nil {
					return fmt.Errorf("the peer's bucket is still there")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestStageCommitPartTooLarge: a part whose changes touch more pages than
// maxPartNodes (the previous part predicted fewer) is rolled back before it
// writes and committed in smaller parts; everything reaches the file. New
// routes are appended (they share pages), so the second round changes the
// attributes of every route: changes on every page of the peer's bucket.
func TestStageCommitPartTooLarge(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Enabled = true
	s, err := Open(Options{Config: cfg, Dir: t.TempDir(), AgentID: testAgent, maxPartNodes: 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seq := uint64(0)
	for round := range 2 {
		for i := range 3000 {
			seq++
			r := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre,
				prefix: fmt.Sprintf("10.%d.%d.%d/32", i%97, i%89, i%83), attr: 1 + uint32(round)}
			sequence(t, s, seq, []*forwarder.Outgoing{r.msg(t, seq, 1)})
		}
		if round == 1 {
			s.partOps = 100000 // as if the last part had shared its pages
		}
		if err := s.CommitThrough(seq); err != nil {
			t.Fatal(err)
		}
	}
	if s.rollbacks == 0 {
		t.Fatalf("no part rolled back: 3,000 changes over the pages of 3,000 routes fit in %d nodes?", s.partNodes)
	}
	file := fileState(t, s)
	if len(file) != 3000 || s.applied != seq {
		t.Fatalf("file holds %d routes through %d, want 3000 through %d", len(file), s.applied, seq)
	}
	changed := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, prefix: "10.0.0.0/32", attr: 2}
	ev, _ := parseRoute(changed.msg(t, 1, 1).Value)
	if file[ev.peer+"#"+ev.rk] != ev.hash {
		t.Fatalf("route %s holds attribute hash %x, want the second round's %x", ev.rk, file[ev.peer+"#"+ev.rk], ev.hash)
	}
	t.Logf("%d parts, %d rolled back", s.parts, s.rollbacks)
}

// TestStageSweepInParts: a sweep that walks (an End-of-RIB withdrawing the
// stale routes of a peer some of whose routes came back) is committed in
// several transactions, each bounded by maxPartNodes. Between parts the
// stage decides as if the sweep were whole; a crash between parts leaves
// the file partly swept with applied before the sweep's record, and the
// re-delivered record withdraws what is left, ending in the same state.
func TestStageSweepInParts(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			dir := t.TempDir()
			open := func() *Stage {
				cfg := DefaultConfig()
				cfg.Enabled, cfg.Duplicates = true, DuplicatesDrop
				s, err := Open(Options{Config: cfg, Dir: dir, AgentID: testAgent, maxPartNodes: 8})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			s := open()
			defer func() { _ = s.Close() }()
			const n = 6000
			seq := staleTable(t, s, n)
			confirmed := 0
			for i := 0; i < n; i += 3 { // every third route comes back
				seq++
				sequence(t, s, seq, []*forwarder.Outgoing{staleRoute(i).msg(t, seq, 1)})
				confirmed++
			}
			if err := s.CommitThrough(seq); err != nil {
				t.Fatal(err)
			}
			seq++
			eor := seq
			if got := sequence(t, s, eor, []*forwarder.Outgoing{staleRoute(0).eorMsg(t, eor, 1)}); len(got) != 1+2*(n-confirmed) {
				t.Fatalf("End-of-RIB: %d messages, want the marker, %d withdraws and their tombstones", len(got), n-confirmed)
			}
			if done, err := s.commitPart(eor); err != nil || done || s.sweepParts != 1 {
				t.Fatalf("first part: done %v, err %v, %d cut sweeps; want the sweep cut", done, err, s.sweepParts)
			}
			partly := len(fileState(t, s))
			if partly <= confirmed || partly >= n {
				t.Fatalf("after one part the file holds %d routes, want fewer than %d and more than the %d confirmed", partly, n, confirmed)
			}
			if crash {
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				s = open()
				if s.applied != eor-1 {
					t.Fatalf("applied %d after the crash, want %d: the sweep's record is not all in the file", s.applied, eor-1)
				}
				// The record again: it withdraws what the file still holds
				// of the stale routes (the sink acknowledged the rest).
				if got := sequence(t, s, eor, []*forwarder.Outgoing{staleRoute(0).eorMsg(t, eor, 1)}); len(got) != 1+2*(partly-confirmed) {
					t.Fatalf("End-of-RIB again: %d messages, want the marker and %d withdraws with tombstones", len(got), partly-confirmed)
				}
			}
			// Decisions between parts see the whole sweep: a swept route
			// is new, a confirmed one a duplicate.
			seq++
			if got := sequence(t, s, seq, []*forwarder.Outgoing{staleRoute(1).msg(t, seq, 1)}); len(got) != 2 {
				t.Fatalf("a swept route announced again: %q, want it and its bmp.rib value", summary(got))
			}
			seq++
			if got := sequence(t, s, seq, []*forwarder.Outgoing{staleRoute(3).msg(t, seq, 1)}); len(got) != 0 {
				t.Fatalf("a confirmed route announced again: %q, want it dropped as a duplicate", summary(got))
			}
			if err := s.CommitThrough(seq); err != nil {
				t.Fatal(err)
			}
			if s.sweepParts < 2 || s.sweepResume != nil || len(s.ops) != 0 {
				t.Fatalf("%d cut parts, resume %v, %d changes left; want the sweep in several parts, all committed", s.sweepParts, s.sweepResume, len(s.ops))
			}
			file := fileState(t, s)
			routes, stale, err := s.st.totals()
			if err != nil {
				t.Fatal(err)
			}
			if len(file) != confirmed+1 || routes != uint64(confirmed+1) || stale != 0 {
				t.Fatalf("file holds %d routes (counted %d, %d stale), want the %d confirmed and the one announced again, none stale",
					len(file), routes, stale, confirmed)
			}
			if _, ok := file[staleRoute(1).peerKey()+"#"+staleRoute(1).rkey()]; !ok {
				t.Fatalf("the route announced again after the sweep is not in the file")
			}
		})
	}
}
