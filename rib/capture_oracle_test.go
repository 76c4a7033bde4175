package rib

// The capture oracle: every shared capture (all TCP streams of the pcaps
// too), encoded by the real BMP encoder, fed through a real Stage, against
// an independent model written from the route streams' JSON events with
// encoding/json (not the stage's parser).
//
// Per capture: pass 1 (the capture), a synthetic peer-down of every peer
// left up (as bmp/session.go makes them), pass 2 (the same BMP messages
// again, or two thirds of its Route Monitoring: a re-sent table after a
// reconnect, with routes the router no longer has), then a stale timer per
// peer still stale. Checked for every record: the route-stream messages
// (keep: all; drop: all but exact duplicates; mark: duplicates marked),
// the synthetic withdraws (exactly the routes the model drops), the
// bmp.rib messages in order, and at the end the consumer's compacted view
// of bmp.rib and the file against the model.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

type capRec struct {
	rec  record.Record
	msgs []*forwarder.Outgoing
	// timerPeer: a KindRIBTimer record to build when sequenced (the
	// epoch is the model's).
	timerPeer string
}

// capturePaths lists every shared capture (RIB_CAPTURES: those whose path
// contains it).
func capturePaths(t *testing.T) []string {
	paths := testenv.BMPCaptures(t, 20)
	if only := os.Getenv("RIB_CAPTURES"); only != "" {
		paths = slices.DeleteFunc(paths, func(p string) bool { return !strings.Contains(p, only) })
	}
	return paths
}

// capEncode encodes the capture: pass 1, synthetic peer-downs of the
// peers left up per stream, pass 2, then timer placeholders.
func capEncode(t *testing.T, path string, twoPasses bool, skip int) []capRec {
	streams, err := capture.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	e := jsonEncoder(t)
	defer e.Close()
	var out []capRec
	seq := uint64(0)
	add := func(rec record.Record) {
		seq++
		rec.Seq = seq
		var msgs []*forwarder.Outgoing
		if err := e.Encode(rec, func(o bmp.Output) {
			msgs = append(msgs, &forwarder.Outgoing{Seq: rec.Seq, Index: o.Index, Stream: o.Stream, Key: bytes.Clone(o.Key), Value: bytes.Clone(o.Value)})
		}); err != nil {
			t.Fatalf("encode: %v", err)
		}
		out = append(out, capRec{rec: rec, msgs: msgs})
	}
	passes := 1
	if twoPasses {
		passes = 2
	}
	at := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	for pass := 0; pass < passes; pass++ {
		for _, st := range streams {
			src := "192.0.2.1:179"
			if st.Src.IsValid() {
				src = st.Src.String()
			}
			key := []byte(netip.MustParseAddrPort(src).Addr().String())
			up := map[bmp.PeerKey][]byte{}
			var order []bmp.PeerKey
			rm := 0
			fr := bmp.NewFramer(bytes.NewReader(st.Data), bmp.MaxMessageBytesLimit, 0)
			for {
				m, err := fr.Next()
				if err != nil {
					break
				}
				m = bytes.Clone(m)
				rm++
				if pass == 1 && skip > 0 && m[5] == byte(bmp.MsgRouteMonitoring) && rm%skip == 0 {
					continue
				}
				add(record.Record{Kind: record.KindBMP, Key: key, Source: src, Time: at, Payload: m})
				// As bmp/session.go tracks the peers up: from a Peer Up, or
				// the first Route Monitoring of a peer without one, until
				// a Peer Down.
				switch bmp.MsgType(m[5]) {
				case bmp.MsgPeerUp, bmp.MsgPeerDown, bmp.MsgRouteMonitoring:
					ph, err := bmp.ParsePeerHeader(m)
					if err != nil {
						continue
					}
					h, known := up[ph.Key()]
					switch {
					case bmp.MsgType(m[5]) == bmp.MsgPeerDown:
						delete(up, ph.Key())
						continue
					case bmp.MsgType(m[5]) == bmp.MsgPeerUp:
						h = bytes.Clone(m[bmp.HeaderLen : bmp.HeaderLen+bmp.PerPeerHeaderLen])
					case !known:
						h = bytes.Clone(m[bmp.HeaderLen : bmp.HeaderLen+bmp.PerPeerHeaderLen])
					}
					if !slices.Contains(order, ph.Key()) {
						order = append(order, ph.Key())
					}
					up[ph.Key()] = h
				}
			}
			if pass == 0 && twoPasses {
				// The session ends with these peers up.
				for _, k := range order {
					if h, ok := up[k]; ok {
						add(record.Record{Kind: record.KindBMPSyntheticPeerDown, Key: key, Source: src, Time: at, Payload: h})
					}
				}
			}
		}
	}
	return out
}

// capModel is the independent model: peer key (router|type|rd|addr) →
// route key (table|family|rd|prefix|path id) → route.
type capModel struct {
	peers map[string]*capPeer
}

type capPeer struct {
	routes map[string]capRoute
	epoch  uint32
	stale  bool
}

type capRoute struct {
	obj   string // the route object as the encoder wrote it
	epoch uint32
	seq   uint64 // of its last announcement
	rib   string // bmp.rib key
}

func (m *capModel) peer(pk string) *capPeer {
	p := m.peers[pk]
	if p == nil {
		p = &capPeer{routes: map[string]capRoute{}}
		m.peers[pk] = p
	}
	return p
}

// capEvent is what the model reads of an event, with encoding/json.
type capEvent struct {
	Type   string          `json:"type"`
	Router string          `json:"router"`
	Peer   *capPeerObj     `json:"peer"`
	Route  json.RawMessage `json:"route"`
}

type capPeerObj struct {
	Address   string `json:"address"`
	RD        string `json:"rd"`
	Type      string `json:"type"`
	Synthetic bool   `json:"synthetic"`
}

type capRouteObj struct {
	Action   string `json:"action"`
	Prefix   string `json:"prefix"`
	PathID   uint32 `json:"path_id"`
	Family   string `json:"family"`
	EndOfRIB bool   `json:"end_of_rib"`
	RD       string `json:"rd"`
	Policy   string `json:"policy"`
	RIB      string `json:"rib"`
}

func capTable(r *capRouteObj) string {
	switch {
	case r.RIB == "loc-rib":
		return "loc-rib"
	case r.RIB == "adj-rib-out" && r.Policy == "post-policy":
		return "adj-rib-out-post"
	case r.RIB == "adj-rib-out":
		return "adj-rib-out-pre"
	case r.Policy == "post-policy":
		return "adj-rib-in-post"
	}
	return "adj-rib-in-pre"
}

// capParsed is one event of the encoder, as the model reads it.
type capParsed struct {
	ev    capEvent
	route capRouteObj
	pk    string
	rk    string
	rib   string
	obj   string
}

func capParse(t *testing.T, v []byte) (p capParsed, ok bool) {
	if err := json.Unmarshal(v, &p.ev); err != nil {
		t.Fatalf("event does not decode: %v: %s", err, v)
	}
	if p.ev.Peer == nil {
		return p, false
	}
	p.pk = p.ev.Router + "|" + p.ev.Peer.Type + "|" + p.ev.Peer.RD + "|" + p.ev.Peer.Address
	if p.ev.Type != "route" {
		return p, true
	}
	if err := json.Unmarshal(p.ev.Route, &p.route); err != nil {
		t.Fatal(err)
	}
	p.obj = string(p.ev.Route)
	table := capTable(&p.route)
	id := strconv.FormatUint(uint64(p.route.PathID), 10)
	p.rk = table + "|" + p.route.Family + "|" + p.route.RD + "|" + p.route.Prefix + "|" + id
	p.rib = p.ev.Router + "|" + p.ev.Peer.RD + "|" + p.ev.Peer.Address + "|" + p.route.RD + "|" + p.route.Prefix + "|" + table + "|" + p.route.Family + "|" + id
	return p, true
}

type capStats struct {
	records, routeEvents, dups, ribMsgs, synthetic, staleWithdrawn, eors int
	madeStale, uncoveredPeers, uncoveredRoutes, notResent                int
	firstSynth                                                           uint64
}

// capRun feeds recs through a stage with the duplicates setting and checks
// it against the model.
func capRun(t *testing.T, recs []capRec, dups string) (st capStats) {
	s := openTest(t, t.TempDir(), dups)
	defer s.Close()
	m := &capModel{peers: map[string]*capPeer{}}
	consumer := map[string]string{} // bmp.rib key → route object; absent: tombstoned
	ribOwner := map[string]string{} // bmp.rib key → peer|rk that last wrote it
	fail := 0
	errorf := func(format string, args ...any) {
		t.Helper()
		fail++
		if fail <= 20 {
			t.Errorf(format, args...)
		}
	}
	for i := range recs {
		r := &recs[i]
		rec := r.rec
		var in []*forwarder.Outgoing
		if r.timerPeer != "" {
			p := m.peer(r.timerPeer)
			rec.Kind, rec.Payload = record.KindRIBTimer, timerPayload(r.timerPeer, p.epoch)
		} else {
			in = copyMsgs(r.msgs)
		}
		// Prefetch as the forwarder does, but for this record's messages
		// only (the copies are fresh per record), and not for every
		// fifth: decisions must not depend on it.
		if i%5 != 0 {
			s.Prefetch(in)
		}
		var out []*forwarder.Outgoing
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
				}
			}()
			return s.Sequence(rec, in, func(o *forwarder.Outgoing) error {
				if o.ID == "" {
					o.ID = forwarder.MessageID(testAgent, rec.Seq, o.Index)
				}
				out = append(out, o)
				return nil
			})
		}()
		if err != nil {
			t.Fatalf("record %d: %v", rec.Seq, err)
		}
		st.records++

		// What the model expects.
		type expRib struct {
			key string
			val *string
		}
		var wantStream []*forwarder.Outgoing // route-stream and other messages, in order
		var wantDupMark []bool
		var wantRib []expRib
		wantSynth := map[string]bool{} // bmp.rib keys of synthetic withdraws
		drop := func(pk string, match func(rk string, x capRoute) bool) {
			p := m.peer(pk)
			for rk, x := range p.routes {
				if match(rk, x) {
					wantSynth[x.rib] = true
					delete(p.routes, rk)
				}
			}
		}
		if r.timerPeer != "" {
			p := m.peer(r.timerPeer)
			if p.stale {
				drop(r.timerPeer, func(_ string, x capRoute) bool { return x.epoch < p.epoch })
				p.stale = false
				st.staleWithdrawn += len(wantSynth)
			}
		}
		for _, msg := range r.msgs {
			pe, ok := capParse(t, msg.Value)
			if !ok {
				wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, false)
				continue
			}
			switch {
			case pe.ev.Type == "peer-down":
				wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, false)
				p := m.peer(pe.pk)
				if rec.Kind == record.KindBMPSyntheticPeerDown {
					if testing.Verbose() {
						t.Logf("synthetic peer-down %s: %d routes", pe.pk, len(p.routes))
					}
					st.madeStale += len(p.routes)
					if st.firstSynth == 0 {
						st.firstSynth = rec.Seq
					}
					p.epoch++
					p.stale = true
				} else {
					drop(pe.pk, func(string, capRoute) bool { return true })
					p.stale = false
				}
			case pe.ev.Type == "route" && pe.route.EndOfRIB:
				st.eors++
				wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, false)
				p := m.peer(pe.pk)
				if p.stale {
					table := capTable(&pe.route)
					n := len(wantSynth)
					drop(pe.pk, func(rk string, x capRoute) bool {
						f := strings.Split(rk, "|")
						return x.epoch < p.epoch && f[0] == table && f[1] == pe.route.Family
					})
					st.staleWithdrawn += len(wantSynth) - n
				}
			case pe.ev.Type == "route" && pe.route.Prefix != "":
				st.routeEvents++
				p := m.peer(pe.pk)
				if pe.route.Action == "withdraw" {
					delete(p.routes, pe.rk)
					wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, false)
					wantRib = append(wantRib, expRib{key: pe.rib})
					continue
				}
				cur, held := p.routes[pe.rk]
				if held && cur.obj == pe.obj {
					st.dups++
					cur.epoch = p.epoch
					cur.seq = rec.Seq
					p.routes[pe.rk] = cur
					switch dups {
					case DuplicatesKeep:
						wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, false)
					case DuplicatesMark:
						wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, true)
					}
					continue
				}
				p.routes[pe.rk] = capRoute{obj: pe.obj, epoch: p.epoch, rib: pe.rib, seq: rec.Seq}
				wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, false)
				v := pe.obj
				wantRib = append(wantRib, expRib{key: pe.rib, val: &v})
			default:
				wantStream, wantDupMark = append(wantStream, msg), append(wantDupMark, false)
			}
		}

		// What the stage emitted.
		var gotStream []*forwarder.Outgoing
		var gotRib []expRib
		gotSynth := map[string]bool{}
		for _, o := range out {
			if o.Stream == StreamRIB {
				e := expRib{key: string(o.Key)}
				if o.Value != nil {
					_, ro, ok := objects(o.Value)
					if !ok {
						errorf("record %d: bmp.rib value without route object: %s", rec.Seq, o.Value)
						continue
					}
					v := string(ro)
					e.val = &v
				}
				gotRib = append(gotRib, e)
				continue
			}
			if bytes.Contains(o.Value, []byte(`"synthetic":true`)) && bytes.HasPrefix(o.Value, routeEventPrefix) {
				pe, _ := capParse(t, o.Value)
				if pe.route.Action != "withdraw" || !pe.ev.Peer.Synthetic {
					errorf("record %d: odd synthetic event %s", rec.Seq, o.Value)
				}
				if o.Stream != tableStream(capTable(&pe.route)) {
					errorf("record %d: synthetic withdraw on stream %s: %s", rec.Seq, o.Stream, o.Value)
				}
				if string(o.Key) != pe.ev.Router+"|"+pe.ev.Peer.RD+"|"+pe.ev.Peer.Address+"|"+pe.route.RD+"|"+pe.route.Prefix {
					errorf("record %d: synthetic withdraw key %q: %s", rec.Seq, o.Key, o.Value)
				}
				if gotSynth[pe.rib] {
					errorf("record %d: synthetic withdraw twice: %s", rec.Seq, pe.rib)
				}
				gotSynth[pe.rib] = true
				st.synthetic++
				continue
			}
			gotStream = append(gotStream, o)
		}
		if len(gotStream) != len(wantStream) {
			errorf("record %d (%s): %d stream messages, want %d\n got %q\nwant %q", rec.Seq, rec.Kind, len(gotStream), len(wantStream), summary(gotStream), summary(wantStream))
		} else {
			for j := range gotStream {
				want := wantStream[j].Value
				if wantDupMark[j] {
					want = markDuplicate(want)
				}
				if !bytes.Equal(gotStream[j].Value, want) || gotStream[j].Stream != wantStream[j].Stream || !bytes.Equal(gotStream[j].Key, wantStream[j].Key) {
					errorf("record %d: message %d\n got %s %q %s\nwant %s %q %s", rec.Seq, j, gotStream[j].Stream, gotStream[j].Key, gotStream[j].Value, wantStream[j].Stream, wantStream[j].Key, want)
				}
			}
		}
		// Synthetic withdraws: their bmp.rib tombstones follow the
		// record's own messages' rib messages in the stage's order; the
		// model's set is unordered, so they are compared as a set.
		var gotRibOwn []expRib
		synthTombs := map[string]bool{}
		for _, g := range gotRib {
			if g.val == nil && gotSynth[g.key] && !slices.ContainsFunc(wantRib, func(w expRib) bool { return w.key == g.key && w.val == nil }) {
				synthTombs[g.key] = true
				continue
			}
			gotRibOwn = append(gotRibOwn, g)
		}
		if !maps.Equal(gotSynth, wantSynth) || !maps.Equal(synthTombs, wantSynth) {
			errorf("record %d (%s): synthetic withdraws %d (tombstones %d), want %d\n got %v\nwant %v", rec.Seq, rec.Kind, len(gotSynth), len(synthTombs), len(wantSynth), sortedKeys(gotSynth), sortedKeys(wantSynth))
		}
		if len(gotRibOwn) != len(wantRib) {
			errorf("record %d: %d bmp.rib messages, want %d", rec.Seq, len(gotRibOwn), len(wantRib))
		} else {
			for j := range gotRibOwn {
				g, w := gotRibOwn[j], wantRib[j]
				if g.key != w.key || (g.val == nil) != (w.val == nil) || (g.val != nil && *g.val != *w.val) {
					gv, wv := "<nil>", "<nil>"
					if g.val != nil {
						gv = *g.val
					}
					if w.val != nil {
						wv = *w.val
					}
					errorf("record %d: bmp.rib %d\n got %s %s\nwant %s %s", rec.Seq, j, g.key, gv, w.key, wv)
				}
			}
		}
		for _, g := range gotRib {
			st.ribMsgs++
			if g.val == nil {
				delete(consumer, g.key)
			} else {
				consumer[g.key] = *g.val
			}
		}
		if i%37 == 0 {
			if err := s.CommitThrough(rec.Seq); err != nil {
				t.Fatal(err)
			}
		}
		if fail > 20 {
			t.Fatalf("too many failures")
		}
	}
	if err := s.CommitThrough(recs[len(recs)-1].rec.Seq); err != nil {
		t.Fatal(err)
	}
	for _, p := range m.peers {
		if p.epoch == 0 && len(p.routes) > 0 {
			st.uncoveredPeers++
			if testing.Verbose() && st.madeStale > 0 {
				var any string
				for rk := range p.routes {
					any = rk
					break
				}
				for pk, q := range m.peers {
					if q == p {
						t.Logf("uncovered peer %s: %d routes, e.g. %s", pk, len(p.routes), any)
					}
				}
			}
			st.uncoveredRoutes += len(p.routes)
			for _, x := range p.routes {
				if st.firstSynth > 0 && x.seq < st.firstSynth {
					st.notResent++
				}
			}
		}
	}
	// The compacted view equals the model.
	want := map[string]string{}
	wantFile := map[string]uint64{}
	for pk, p := range m.peers {
		for rk, x := range p.routes {
			if o, dup := ribOwner[x.rib]; dup {
				errorf("bmp.rib key %s held by two routes: %s and %s", x.rib, o, pk+"#"+rk)
			}
			ribOwner[x.rib] = pk + "#" + rk
			want[x.rib] = x.obj
			wantFile[pk+"#"+rk] = xxhash.Sum64String(x.obj)
		}
	}
	compareMaps("bmp.rib view", consumer, want, errorf)
	compareMaps("file", fileState(t, s), wantFile, errorf)
	if testutilGauge(s.m.routes) != float64(len(wantFile)) {
		errorf("routes gauge %v, want %d", testutilGauge(s.m.routes), len(wantFile))
	}
	return st
}

// compareMaps reports every key where got differs from want.
func compareMaps[V comparable](what string, got, want map[string]V, errorf func(string, ...any)) {
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			errorf("%s: %s = %v (held %v), want %v", what, k, g, ok, v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			errorf("%s holds %s, the model does not", what, k)
		}
	}
}

// sortedKeys is m's first keys in order, for a message.
func sortedKeys(m map[string]bool) []string {
	k := slices.Sorted(maps.Keys(m))
	if len(k) > 10 {
		k = append(k[:10], "…")
	}
	return k
}

// capWithTimers appends a timer record per peer key seen in a synthetic
// peer-down (the stage's peer key, built from the event).
func capWithTimers(t *testing.T, recs []capRec) []capRec {
	seen := map[string]bool{}
	var peers []string
	for _, r := range recs {
		if r.rec.Kind != record.KindBMPSyntheticPeerDown {
			continue
		}
		for _, m := range r.msgs {
			if pe, ok := capParse(t, m.Value); ok && pe.ev.Type == "peer-down" && !seen[pe.pk] {
				seen[pe.pk] = true
				peers = append(peers, pe.pk)
			}
		}
	}
	seq := recs[len(recs)-1].rec.Seq
	for _, p := range peers {
		seq++
		recs = append(recs, capRec{rec: record.Record{Seq: seq, Time: time.Now()}, timerPeer: p})
	}
	return recs
}

func TestCaptureOracle(t *testing.T) {
	for _, path := range capturePaths(t) {
		name := filepath.Base(path)
		dump := strings.Contains(name, "100k")
		if dump && raceEnabled {
			t.Logf("%s: replayed by the pass without the race detector (scripts/test.sh), ten times slower with it", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			if testing.Short() && dump {
				t.Skip("the 100k-route dump takes a minute")
			}
			variants := []struct {
				two  bool
				skip int
			}{{false, 0}, {true, 0}, {true, 3}}
			dupModes := []string{DuplicatesKeep, DuplicatesDrop, DuplicatesMark}
			if dump {
				// 400,000 route events a pass: the variant that exercises
				// the most (a re-sent table with routes gone), the default
				// duplicates setting.
				variants, dupModes = variants[2:], []string{DuplicatesDrop}
			}
			for _, v := range variants {
				two := v.two
				recs := capEncode(t, path, two, v.skip)
				if len(recs) == 0 {
					t.Fatalf("no BMP messages read from %s", path)
				}
				if two {
					recs = capWithTimers(t, recs)
				}
				for _, dups := range dupModes {
					st := capRun(t, recs, dups)
					t.Logf("two passes %v skip %d, %s: %+v", two, v.skip, dups, st)
					if two && st.notResent > 0 {
						// A peer never marked stale keeps routes of the first
						// session that the second did not re-send: withdrawn
						// by nothing, ever.
						t.Errorf("two passes, skip %d, %s: %d routes of the first session kept for peers never marked stale", v.skip, dups, st.notResent)
					}
				}
			}
		})
	}
}
