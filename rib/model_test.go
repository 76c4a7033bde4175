package rib

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
)

// modelRecord is one spooled record: route events, a Peer Down (real or
// synthetic), an End-of-RIB marker, or a stale timer.
type modelRecord struct {
	routes []testRoute
	kind   string // "" (routes), down, synthetic, eor, timer
	at     testRoute
	epoch  uint32 // timer
}

func (r modelRecord) rec(t testing.TB, seq uint64) (record.Record, []*forwarder.Outgoing) {
	rec := record.Record{Seq: seq, Kind: record.KindBMP, Time: time.Unix(1700000000, 0)}
	switch r.kind {
	case "down":
		return rec, []*forwarder.Outgoing{peerDownMsg(t, seq, 1, r.at.router, r.at.peer, r.at.table == TableLocRIB)}
	case "synthetic":
		return r.at.synthDown(t, seq)
	case "eor":
		return rec, []*forwarder.Outgoing{r.at.eorMsg(t, seq, 1)}
	case "timer":
		rec.Kind, rec.Payload = record.KindRIBTimer, timerPayload(r.at.peerKey(), r.epoch)
		return rec, nil
	}
	out := make([]*forwarder.Outgoing, len(r.routes))
	for i, rt := range r.routes {
		out[i] = rt.msg(t, seq, i+1)
		if (seq+uint64(i))%2 == 0 {
			// The key the encoder gives route events, which the stage
			// reads the route's distinguisher from (the others: from the
			// route object).
			out[i].Key = routeStreamKey(rt.peerKey(), rt.rkey())
		}
	}
	return rec, out
}

// model is the route state as plain maps.
type model struct {
	routes map[string]modelRoute // peer#route key
	peers  map[string]modelPeer
}

type modelRoute struct {
	hash  uint64
	epoch uint32
}

type modelPeer struct {
	epoch uint32
	stale bool
}

func newModel() *model { return &model{routes: map[string]modelRoute{}, peers: map[string]modelPeer{}} }

func (m *model) hashes() map[string]uint64 {
	out := make(map[string]uint64, len(m.routes))
	for k, r := range m.routes {
		out[k] = r.hash
	}
	return out
}

// drop forgets the routes of peer that match and returns their bmp.rib keys.
func (m *model) drop(pk string, match func(rk string, r modelRoute) bool) (keys [][]byte) {
	for k, r := range m.routes {
		peer, rk, _ := strings.Cut(k, "#")
		if peer == pk && match(rk, r) {
			keys = append(keys, ribKey(pk, rk))
			delete(m.routes, k)
		}
	}
	return keys
}

// apply applies a record and returns the ids of the announcements it
// expects on the route streams (changes), and the bmp.rib keys it must
// tombstone synthetically.
func (m *model) apply(t testing.TB, seq uint64, r modelRecord) (changes []string, tombstones [][]byte) {
	pk := r.at.peerKey()
	p := m.peers[pk]
	switch r.kind {
	case "down":
		p.stale = false
		m.peers[pk] = p
		return nil, m.drop(pk, func(string, modelRoute) bool { return true })
	case "synthetic":
		p.epoch++
		p.stale = true
		m.peers[pk] = p
		return nil, nil
	case "eor":
		if !p.stale {
			return nil, nil
		}
		return nil, m.drop(pk, func(rk string, x modelRoute) bool { return x.epoch < p.epoch && tableOf(rk) == r.at.table })
	case "timer":
		if !p.stale || r.epoch != p.epoch {
			return nil, nil
		}
		p.stale = false
		m.peers[pk] = p
		return nil, m.drop(pk, func(_ string, x modelRoute) bool { return x.epoch < p.epoch })
	}
	for i, rt := range r.routes {
		pk := rt.peerKey()
		k := pk + "#" + rt.rkey()
		if rt.withdraw {
			delete(m.routes, k)
			continue
		}
		ev, ok := parseRoute(rt.msg(t, seq, i+1).Value)
		if !ok {
			t.Fatal("test route does not parse")
		}
		if held, ok := m.routes[k]; !ok || held.hash != ev.hash {
			changes = append(changes, forwarder.MessageID(testAgent, seq, i+1))
		}
		m.routes[k] = modelRoute{hash: ev.hash, epoch: m.peers[pk].epoch}
	}
	return changes, nil
}

// gen makes a random record; timers carry the peer's current stale epoch
// (or, at times, an old one).
func (m *model) gen(rng *rand.Rand) modelRecord {
	routers := []string{"192.0.2.1", "192.0.2.2"}
	peers := []string{"198.51.100.1", "198.51.100.2", "2001:db8::1"}
	tables := []string{TableAdjInPre, TableAdjInPost, TableAdjOutPost, TableLocRIB}
	prefixes := []string{"10.0.0.0/24", "10.0.1.0/24", "10.1.0.0/16", "203.0.113.0/24", "0.0.0.0/0"}
	router, peer := routers[rng.IntN(len(routers))], peers[rng.IntN(len(peers))]
	at := testRoute{router: router, peer: peer, table: tables[rng.IntN(len(tables))]}
	switch x := rng.IntN(100); {
	case x < 3:
		return modelRecord{kind: "down", at: at}
	case x < 7:
		return modelRecord{kind: "synthetic", at: at}
	case x < 12:
		return modelRecord{kind: "eor", at: at}
	case x < 15:
		e := m.peers[at.peerKey()].epoch
		if rng.IntN(4) == 0 && e > 0 {
			e--
		}
		return modelRecord{kind: "timer", at: at, epoch: e}
	}
	var r modelRecord
	for range 1 + rng.IntN(4) {
		r.routes = append(r.routes, testRoute{
			router: router, peer: peer, table: tables[rng.IntN(len(tables))],
			prefix: prefixes[rng.IntN(len(prefixes))], pathID: uint32(rng.IntN(3)),
			withdraw: rng.IntN(4) == 0, attr: uint32(rng.IntN(3)),
		})
	}
	return r
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
//
// The last seeds commit in transactions of a few pages, so that sweeps are
// cut into several (TestStageSweepInParts crashes between them).
func TestStageModel(t *testing.T) {
	cuts := uint64(0)
	for seed := range uint64(16) {
		nodes := int64(0)
		if seed >= 12 {
			nodes = 1
		}
		t.Run("", func(t *testing.T) { cuts += runModel(t, seed, 400, nodes) })
	}
	if cuts == 0 {
		t.Errorf("the runs with bounded commit parts cut no sweep: cut sweeps are not covered")
	}
}

// runModel runs the model over n random records; partNodes, when not 0,
// bounds the stage's commit parts (Options.maxPartNodes). It returns how
// many commit transactions ended inside a sweep.
func runModel(t *testing.T, seed uint64, n int, partNodes int64) (cuts uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	dups := []string{DuplicatesDrop, DuplicatesMark, DuplicatesKeep}[seed%3]
	// Records and what the model expects of them, over the whole sequence.
	final := newModel()
	recs := make([]modelRecord, n)
	prefixModels := []map[string]uint64{{}} // prefixModels[i]: after records 1..i
	var wantChanges []string
	var wantTombstones []struct {
		seq uint64
		key []byte
	}
	for i := range recs {
		seq := uint64(i + 1)
		recs[i] = final.gen(rng)
		ch, tombs := final.apply(t, seq, recs[i])
		wantChanges = append(wantChanges, ch...)
		for _, k := range tombs {
			wantTombstones = append(wantTombstones, struct {
				seq uint64
				key []byte
			}{seq, k})
		}
		prefixModels = append(prefixModels, final.hashes())
	}

	dir := t.TempDir()
	s := openTestNodes(t, dir, dups, partNodes)
	defer func() { _ = s.Close() }()
	var delivered []*forwarder.Outgoing // what the sink received, in order
	spoolAcked := uint64(0)
	type flight struct {
		seq  uint64
		msgs []*forwarder.Outgoing
	}
	crashes, failures := 0, 0
	for spoolAcked < uint64(n) {
		checkOverlayCounts(t, s)
		if err := s.Rewind(spoolAcked + 1); err != nil {
			t.Fatal(err)
		}
		var inflight []flight
		crashed := false
		// As the forwarder does, the messages of the next few records go
		// to Prefetch first, most of the time; sometimes ones Sequence
		// never gets (out of step), which must change nothing.
		var ahead [][]*forwarder.Outgoing
		for pos := spoolAcked + 1; pos <= uint64(n) && !crashed; pos++ {
			rec, msgs := recs[pos-1].rec(t, pos)
			if len(ahead) == 0 && rng.IntN(4) != 0 {
				var all []*forwarder.Outgoing
				for j := pos; j <= min(pos+uint64(rng.IntN(4)), uint64(n)); j++ {
					_, ms := recs[j-1].rec(t, j)
					ahead = append(ahead, copyMsgs(ms))
					all = append(all, ahead[len(ahead)-1]...)
				}
				s.Prefetch(all)
				if rng.IntN(20) == 0 {
					ahead = nil
				}
			}
			in := copyMsgs(msgs)
			if len(ahead) > 0 {
				in, ahead = ahead[0], ahead[1:]
			}
			inflight = append(inflight, flight{pos, sequenceIn(t, s, rec, in)})
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
			cuts += s.sweepParts
			if crashes%2 == 0 {
				crashClose(s) // the index rebuilt at open
			} else {
				_ = s.Close() // a clean stop: the index kept
			}
			s = openTestNodes(t, dir, dups, partNodes)
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
	if got := fileState(t, s); !equalModel(got, final.hashes()) {
		t.Fatalf("seed %d: file holds %v, want %v", seed, got, final)
	}
	staleWant := 0
	for k, r := range final.routes {
		peer, _, _ := strings.Cut(k, "#")
		if p := final.peers[peer]; p.stale && r.epoch < p.epoch {
			staleWant++
		}
	}
	if got := testutilGauge(s.m.stale); int(got) != staleWant {
		t.Fatalf("seed %d: bgpedge_rib_stale_routes %v, model %d", seed, got, staleWant)
	}
	if got := testutilGauge(s.m.routes); int(got) != len(final.routes) {
		t.Fatalf("seed %d: bgpedge_rib_routes %v, model %d", seed, got, len(final.routes))
	}
	// The compacted view.
	view := map[string][]byte{}
	ids := map[string]bool{}
	tombs := map[string]bool{}
	for _, m := range delivered {
		ids[m.ID] = true
		if m.Stream == StreamRIB {
			if m.Value == nil {
				delete(view, string(m.Key))
				tombs[fmt.Sprintf("%s@%d", m.Key, m.Seq)] = true
			} else {
				view[string(m.Key)] = m.Value
			}
		}
	}
	want := map[string]uint64{}
	for k, r := range final.routes {
		h := r.hash
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
	cuts += s.sweepParts
	t.Logf("seed %d (%s): %d records, %d crashes, %d sink failures, %d messages delivered, %d routes at the end, %d sweep transactions cut",
		seed, dups, n, crashes, failures, len(delivered), len(final.routes), cuts)
	return cuts
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
