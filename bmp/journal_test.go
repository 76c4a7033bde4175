package bmp

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// syntheticDowns returns the payloads of the synthetic peer-down records.
func syntheticDowns(recs []record.Record) [][]byte {
	var out [][]byte
	for _, r := range recs {
		if r.Kind == record.KindBMPSyntheticPeerDown {
			out = append(out, r.Payload)
		}
	}
	return out
}

// journalPeersUp counts the peers j holds up, over all sessions.
func journalPeersUp(t *testing.T, j *SessionJournal) int {
	t.Helper()
	n := 0
	if err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(journalBucket).ForEachBucket(func(id []byte) error {
			return tx.Bucket(journalBucket).Bucket(id).ForEach(func(k, _ []byte) error {
				if k[0] == 'p' {
					n++
				}
				return nil
			})
		})
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSessionJournal: the journal holds the peers a session has up, from
// before their Peer Up (or first Route Monitoring, without one) is spooled
// until their Peer Down (or the session's synthetic ones) is; Recover marks
// down what a run left behind, once.
func TestSessionJournal(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "clean close"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			j, err := OpenSessionJournal(dir)
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			cfg.Listen = "127.0.0.1:0"
			spool := &memSpool{}
			reg := prometheus.NewRegistry()
			l, err := NewListener(cfg, spool, slog.New(slog.DiscardHandler), reg, WithSessionJournal(j))
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Peer 2 goes down in a later batch than it came up in; peer 4
			// sends routes without a Peer Up.
			if _, err := c.Write(bytes.Join([][]byte{initiation(), peerUp(1), peerUp(2), peerUp(3), routeMonitoring(4, 1)}, nil)); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 5*time.Second, "5 messages spooled", func() bool { return spool.len() == 5 })
			if _, err := c.Write(peerDown(2)); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 5*time.Second, "the peer down spooled", func() bool { return spool.len() == 6 })
			// The journal forgets a peer just after its Peer Down is
			// spooled; a crash in between marks it down once more, which
			// is allowed (at least once) but not what this test is about.
			testenv.Eventually(t, 5*time.Second, "peer 2 forgotten by the journal", func() bool { return journalPeersUp(t, j) == 3 })
			if crash {
				// The process dies: nothing after this reaches the journal.
				if err := j.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
			if crash {
				if j, err = OpenSessionJournal(dir); err != nil {
					t.Fatal(err)
				}
			}
			defer j.Close()

			after := &memSpool{}
			n, err := j.Recover(context.Background(), after, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			got := syntheticDowns(after.snapshot())
			if !crash {
				if n != 0 || len(got) != 0 {
					t.Fatalf("after a clean close Recover marked %d peers down", n)
				}
				if downs := syntheticDowns(spool.snapshot()); len(downs) != 3 {
					t.Fatalf("clean close spooled %d synthetic peer downs, want 3", len(downs))
				}
				return
			}
			if n != 3 || len(got) != 3 {
				t.Fatalf("Recover marked %d peers down (%d records), want peers 1, 3 and 4", n, len(got))
			}
			want := map[string]bool{string(peerHeader(1)): true, string(peerHeader(3)): true, string(peerHeader(4)): true}
			for _, h := range got {
				if !want[string(h)] {
					t.Fatalf("synthetic peer down for %x, want peers 1, 3 and 4 only", h)
				}
				delete(want, string(h))
			}
			for _, r := range after.snapshot() {
				if string(r.Key) != "127.0.0.1" || r.Source != c.LocalAddr().String() {
					t.Fatalf("record key %q source %q, want the router's", r.Key, r.Source)
				}
			}
			// Recovered once: a second start has nothing to mark down.
			if n, err := j.Recover(context.Background(), &memSpool{}, slog.New(slog.DiscardHandler)); n != 0 || err != nil {
				t.Fatalf("second Recover: %d, %v", n, err)
			}
		})
	}
}

// TestSessionJournalWritesOnlyChanges: a session with many peers up writes
// one key per Peer Up or Down, not its whole peer set, and the journal of
// an earlier version (one JSON value per session) is still recovered.
func TestSessionJournalWritesOnlyChanges(t *testing.T) {
	j, err := OpenSessionJournal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	e := journalEntry{Router: []byte("192.0.2.200"), Source: "192.0.2.200:4000"}
	peer := func(n int) (PeerKey, []byte) {
		a := netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)})
		h := make([]byte, PerPeerHeaderLen)
		copy(h[22:26], a.AsSlice())
		return PeerKey{Address: a}, h
	}
	pages := func() int64 { st := j.db.Stats(); return st.TxStats.GetPageCount() }
	const peers = 1000
	for n := 1; n <= peers; n++ {
		k, h := peer(n)
		before := pages()
		if err := j.update("s1", e, map[PeerKey][]byte{k: h}, nil); err != nil {
			t.Fatal(err)
		}
		// A leaf and the branches above it, at most a split's worth, however
		// many peers are up already (the whole set of 1,000 is 15 pages).
		if written := pages() - before; written > 8 {
			t.Fatalf("peer %d: the update wrote %d pages", n, written)
		}
	}
	k7, _ := peer(7)
	k9, _ := peer(9)
	if err := j.update("s1", e, nil, []PeerKey{k7, k9}); err != nil {
		t.Fatal(err)
	}
	old, err := json.Marshal(journalEntry{Router: []byte("192.0.2.201"), Source: "192.0.2.201:5000", Headers: [][]byte{peerHeader(42)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(journalBucket).Put([]byte("old"), old) }); err != nil {
		t.Fatal(err)
	}
	sp := &memSpool{}
	n, err := j.Recover(context.Background(), sp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	recs := sp.snapshot()
	sources := map[string]int{}
	for _, r := range recs {
		sources[r.Source]++
	}
	if n != peers-1 || sources["192.0.2.200:4000"] != peers-2 || sources["192.0.2.201:5000"] != 1 {
		t.Fatalf("recovered %d synthetic peer-downs, by source %v; want %d and 1", n, sources, peers-2)
	}
}
