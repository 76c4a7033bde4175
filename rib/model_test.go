package rib

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/bgpedge/bgpedge/forwarder"
)

// modelRecord is one spooled record: route events, or a peer down.
type modelRecord struct {
	routes   []testRoute
	down     bool
	router   string
	peer     string // "" with locRIB
	downsLoc bool
}

func (r modelRecord) msgs(t testing.TB, seq uint64) []*forwarder.Outgoing {
	if r.down {
		return []*forwarder.Outgoing{peerDownMsg(t, seq, 1, r.router, r.peer, r.downsLoc)}
	}
	out := make([]*forwarder.Outgoing, len(r.routes))
	for i, rt := range r.routes {
		out[i] = rt.msg(t, seq, i+1)
	}
	return out
}

// model is the route state as a plain map: peer#route key → attribute hash.
type model map[string]uint64

// apply applies a record and returns the ids of the announcements it
// expects on the route streams (changes), and the bmp.rib keys a peer down
// must tombstone.
func (m model) apply(t testing.TB, seq uint64, r modelRecord) (changes []string, tombstones [][]byte) {
	if r.down {
		pk := peerKey(r.router, "global", "", r.peer)
		if r.downsLoc {
			pk = peerKey(r.router, "loc-rib", "", "0.0.0.0")
		}
		for k := range m {
			peer, rk, _ := bytes.Cut([]byte(k), []byte("#"))
			if string(peer) == pk {
				tombstones = append(tombstones, ribKey(pk, string(rk)))
				delete(m, k)
			}
		}
		return nil, tombstones
	}
	for i, rt := range r.routes {
		k := rt.peerKey() + "#" + rt.rkey()
		if rt.withdraw {
			delete(m, k)
			continue
		}
		ev, ok := parseRoute(rt.msg(t, seq, i+1).Value)
		if !ok {
			t.Fatal("test route does not parse")
		}
		if h, held := m[k]; !held || h != ev.hash {
			changes = append(changes, forwarder.MessageID(testAgent, seq, i+1))
		}
		m[k] = ev.hash
	}
	return changes, nil
}

func genRecords(rng *rand.Rand, n int) []modelRecord {
	routers := []string{"192.0.2.1", "192.0.2.2"}
	peers := []string{"198.51.100.1", "198.51.100.2", "2001:db8::1"}
	tables := []string{TableAdjInPre, TableAdjInPost, TableAdjOutPost, TableLocRIB}
	prefixes := []string{"10.0.0.0/24", "10.0.1.0/24", "10.1.0.0/16", "203.0.113.0/24", "0.0.0.0/0"}
	recs := make([]modelRecord, n)
	for i := range recs {
		router := routers[rng.IntN(len(routers))]
		if rng.IntN(25) == 0 {
			loc := rng.IntN(4) == 0
			recs[i] = modelRecord{down: true, router: router, peer: peers[rng.IntN(len(peers))], downsLoc: loc}
			continue
		}
		peer := peers[rng.IntN(len(peers))]
		for range 1 + rng.IntN(4) {
			recs[i].routes = append(recs[i].routes, testRoute{
				router: router, peer: peer, table: tables[rng.IntN(len(tables))],
				prefix: prefixes[rng.IntN(len(prefixes))], pathID: uint32(rng.IntN(3)),
				withdraw: rng.IntN(4) == 0, attr: uint32(rng.IntN(3)),
			})
		}
	}
	return recs
}

// TestStageModel drives the stage the way the forwarder does — sessions
// that read ahead of acks, acks in prefixes, sink failures that re-read
// from the first unacknowledged record, crashes (with and without the
// spool's ack persisted after the state's commit) — over random records,
// and checks against a plain map: the file equals the model after every
// crash; at the end the compacted bmp.rib view (last value per key of
// everything the sink received, re-deliveries included) is the model's
// table; every announcement the model calls a change, and every synthetic
// tombstone of a Peer Down, reached the sink.
func TestStageModel(t *testing.T) {
	for seed := range uint64(12) {
		t.Run("", func(t *testing.T) { runModel(t, seed, 400) })
	}
}

func runModel(t *testing.T, seed uint64, n int) {
	rng := rand.New(rand.NewPCG(seed, 7))
	recs := genRecords(rng, n)
	dups := []string{DuplicatesDrop, DuplicatesMark, DuplicatesKeep}[seed%3]
	// Expected, from the model over the whole sequence.
	final := model{}
	prefixModels := []model{{}} // prefixModels[i]: after records 1..i
	var wantChanges []string
	var wantTombstones []struct {
		seq uint64
		key []byte
	}
	for i, r := range recs {
		seq := uint64(i + 1)
		ch, tombs := final.apply(t, seq, r)
		wantChanges = append(wantChanges, ch...)
		for _, k := range tombs {
			wantTombstones = append(wantTombstones, struct {
				seq uint64
				key []byte
			}{seq, k})
		}
		snap := model{}
		for k, v := range final {
			snap[k] = v
		}
		prefixModels = append(prefixModels, snap)
	}

	dir := t.TempDir()
	s := openTest(t, dir, dups)
	defer func() { _ = s.Close() }()
	var delivered []*forwarder.Outgoing // what the sink received, in order
	spoolAcked := uint64(0)
	type flight struct {
		seq  uint64
		msgs []*forwarder.Outgoing
	}
	crashes, failures := 0, 0
	for spoolAcked < uint64(n) {
		if err := s.Rewind(spoolAcked + 1); err != nil {
			t.Fatal(err)
		}
		var inflight []flight
		crashed := false
		for pos := spoolAcked + 1; pos <= uint64(n) && !crashed; pos++ {
			inflight = append(inflight, flight{pos, sequence(t, s, pos, recs[pos-1].msgs(t, pos))})
			switch r := rng.Float64(); {
			case r < 0.3 && len(inflight) > 0: // acks for a prefix
				k := 1 + rng.IntN(len(inflight))
				for _, f := range inflight[:k] {
					delivered = append(delivered, f.msgs...)
				}
				wm := inflight[k-1].seq
				inflight = inflight[k:]
				if err := s.CommitThrough(wm); err != nil {
					t.Fatal(err)
				}
				if rng.IntN(15) == 0 { // crash before the spool's ack is persisted
					crashed = true
					break
				}
				spoolAcked = wm
			case r < 0.33: // the sink fails: part of what was in flight arrived anyway
				failures++
				for _, f := range inflight[:rng.IntN(len(inflight)+1)] {
					delivered = append(delivered, f.msgs...)
				}
				pos = uint64(n) + 1 // end the session
				inflight = nil
			case r < 0.35:
				crashed = true
			}
		}
		if crashed {
			crashes++
			for _, f := range inflight[:rng.IntN(len(inflight)+1)] {
				delivered = append(delivered, f.msgs...)
			}
			inflight = nil
			_ = s.Close()
			s = openTest(t, dir, dups)
			applied := s.applied
			if got, want := fileState(t, s), prefixModels[applied]; !equalModel(got, want) {
				t.Fatalf("seed %d: after a crash the file (applied %d) holds %v, want %v", seed, applied, got, want)
			}
			continue
		}
		for _, f := range inflight { // the session drained: everything acked
			delivered = append(delivered, f.msgs...)
			if err := s.CommitThrough(f.seq); err != nil {
				t.Fatal(err)
			}
			spoolAcked = f.seq
		}
	}
	if got := fileState(t, s); !equalModel(got, final) {
		t.Fatalf("seed %d: file holds %v, want %v", seed, got, final)
	}
	// The compacted view.
	view := map[string][]byte{}
	ids := map[string]bool{}
	tombs := map[string]bool{}
	for _, m := range delivered {
		ids[m.ID] = true
		if m.Stream == forwarder.StreamRIB {
			if m.Value == nil {
				delete(view, string(m.Key))
				tombs[fmt.Sprintf("%s@%d", m.Key, m.Seq)] = true
			} else {
				view[string(m.Key)] = m.Value
			}
		}
	}
	want := map[string]uint64{}
	for k, h := range final {
		peer, rk, _ := bytes.Cut([]byte(k), []byte("#"))
		want[string(ribKey(string(peer), string(rk)))] = h
	}
	if len(view) != len(want) {
		t.Fatalf("seed %d: compacted bmp.rib has %d keys, model %d", seed, len(view), len(want))
	}
	for k, v := range view {
		ev, ok := parseRoute(v)
		if !ok || want[k] != ev.hash {
			var pretty any
			_ = json.Unmarshal(v, &pretty)
			t.Fatalf("seed %d: bmp.rib %s = %v, model hash %x", seed, k, pretty, want[k])
		}
	}
	for _, id := range wantChanges {
		if !ids[id] {
			t.Fatalf("seed %d: announcement %s, a change, never reached the sink", seed, id)
		}
	}
	for _, w := range wantTombstones {
		if !tombs[fmt.Sprintf("%s@%d", w.key, w.seq)] {
			t.Fatalf("seed %d: peer down at seq %d: no tombstone for %s", seed, w.seq, w.key)
		}
	}
	t.Logf("seed %d (%s): %d records, %d crashes, %d sink failures, %d messages delivered, %d routes at the end",
		seed, dups, n, crashes, failures, len(delivered), len(final))
}

func equalModel(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
