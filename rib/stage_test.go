package rib

import (
	"bytes"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// summary renders emitted messages as "stream key value-kind" lines.
func summary(msgs []*forwarder.Outgoing) []string {
	var out []string
	for _, m := range msgs {
		kind := "value"
		switch {
		case m.Value == nil:
			kind = "tombstone"
		case bytes.Contains(m.Value, []byte(`"duplicate":true`)):
			kind = "duplicate"
		case bytes.Contains(m.Value, []byte(`"synthetic":true`)) && bytes.Contains(m.Value, []byte(`"action":"withdraw"`)):
			kind = "synthetic-withdraw"
		case bytes.Contains(m.Value, []byte(`"action":"withdraw"`)):
			kind = "withdraw"
		case bytes.Contains(m.Value, []byte(`"type":"peer-down"`)):
			kind = "peer-down"
		}
		out = append(out, fmt.Sprintf("%s %s %s", m.Stream, m.Key, kind))
	}
	return out
}

func TestStageDecisions(t *testing.T) {
	a := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, prefix: "10.0.0.0/24", attr: 1}
	aChanged := a
	aChanged.attr = 2
	aPath2 := a
	aPath2.pathID = 2
	aWithdraw := a
	aWithdraw.withdraw = true
	b := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPost, prefix: "10.0.1.0/24", attr: 1}
	loc := testRoute{router: "192.0.2.1", table: TableLocRIB, prefix: "10.0.2.0/24", attr: 1}
	other := testRoute{router: "192.0.2.1", peer: "198.51.100.2", table: TableAdjInPre, prefix: "10.0.0.0/24", attr: 1}
	const (
		ribA      = "bmp.rib 192.0.2.1||198.51.100.1||10.0.0.0/24|adj-rib-in-pre|ipv4-unicast|0"
		ribA2     = "bmp.rib 192.0.2.1||198.51.100.1||10.0.0.0/24|adj-rib-in-pre|ipv4-unicast|2"
		ribB      = "bmp.rib 192.0.2.1||198.51.100.1||10.0.1.0/24|adj-rib-in-post|ipv4-unicast|0"
		routeA    = "bmp.route.pre-policy 192.0.2.1"
		routeAKey = "bmp.route.pre-policy 192.0.2.1||198.51.100.1||10.0.0.0/24"
	)
	type step struct {
		msgs func(seq uint64) []*forwarder.Outgoing
		want []string
	}
	one := func(r testRoute) func(seq uint64) []*forwarder.Outgoing {
		return func(seq uint64) []*forwarder.Outgoing { return []*forwarder.Outgoing{r.msg(t, seq, 1)} }
	}
	for _, tc := range []struct {
		name  string
		dups  string
		steps []step
	}{
		{"new route then duplicate dropped", DuplicatesDrop, []step{
			{one(a), []string{routeA + " value", ribA + " value"}},
			{one(a), nil},
		}},
		{"duplicate marked", DuplicatesMark, []step{
			{one(a), []string{routeA + " value", ribA + " value"}},
			{one(a), []string{routeA + " duplicate"}},
		}},
		{"duplicate kept", DuplicatesKeep, []step{
			{one(a), []string{routeA + " value", ribA + " value"}},
			{one(a), []string{routeA + " value"}},
		}},
		{"changed attributes emitted", DuplicatesDrop, []step{
			{one(a), []string{routeA + " value", ribA + " value"}},
			{one(aChanged), []string{routeA + " value", ribA + " value"}},
			{one(a), []string{routeA + " value", ribA + " value"}},
		}},
		{"add-path ids are distinct routes", DuplicatesDrop, []step{
			{one(a), []string{routeA + " value", ribA + " value"}},
			{one(aPath2), []string{routeA + " value", ribA2 + " value"}},
			{one(aPath2), nil},
		}},
		{"withdraw tombstones, known or not", DuplicatesDrop, []step{
			{one(aWithdraw), []string{routeA + " withdraw", ribA + " tombstone"}},
			{one(a), []string{routeA + " value", ribA + " value"}},
			{one(aWithdraw), []string{routeA + " withdraw", ribA + " tombstone"}},
			{one(a), []string{routeA + " value", ribA + " value"}},
		}},
		{"peer down withdraws every table of that peer only", DuplicatesDrop, []step{
			{one(a), []string{routeA + " value", ribA + " value"}},
			{one(aPath2), []string{routeA + " value", ribA2 + " value"}},
			{one(b), []string{"bmp.route.post-policy 192.0.2.1 value", ribB + " value"}},
			{one(loc), []string{"bmp.route.loc-rib 192.0.2.1 value", "bmp.rib 192.0.2.1||0.0.0.0||10.0.2.0/24|loc-rib|ipv4-unicast|0 value"}},
			{one(other), []string{routeA + " value", "bmp.rib 192.0.2.1||198.51.100.2||10.0.0.0/24|adj-rib-in-pre|ipv4-unicast|0 value"}},
			{func(seq uint64) []*forwarder.Outgoing {
				return []*forwarder.Outgoing{peerDownMsg(t, seq, 1, "192.0.2.1", "198.51.100.1", false)}
			}, []string{
				"bmp.peer 192.0.2.1 peer-down", // then in the order first announced
				routeAKey + " synthetic-withdraw", ribA + " tombstone",
				routeAKey + " synthetic-withdraw", ribA2 + " tombstone",
				"bmp.route.post-policy 192.0.2.1||198.51.100.1||10.0.1.0/24 synthetic-withdraw", ribB + " tombstone",
			}},
			{one(a), []string{routeA + " value", ribA + " value"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, t.TempDir(), tc.dups)
			defer s.Close()
			for i, st := range tc.steps {
				seq := uint64(100 + i)
				got := summary(sequence(t, s, seq, st.msgs(seq)))
				if !slices.Equal(got, st.want) {
					t.Fatalf("step %d:\n got %q\nwant %q", i, got, st.want)
				}
				if i%2 == 1 { // commits interleave with lookups in the forwarder
					if err := s.CommitThrough(seq - 1); err != nil {
						t.Fatal(err)
					}
				}
			}
		})
	}
}

// TestStageSyntheticIDs checks that the synthetic events' JSON ids are the
// message ids the forwarder gives them, and the envelope is the peer-down's.
func TestStageSyntheticIDs(t *testing.T) {
	s := openTest(t, t.TempDir(), DuplicatesDrop)
	defer s.Close()
	a := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, prefix: "10.0.0.0/24", pathID: 7, attr: 1}
	sequence(t, s, 1, []*forwarder.Outgoing{a.msg(t, 1, 1)})
	out := sequence(t, s, 2, []*forwarder.Outgoing{{Seq: 2, Index: 0, ID: "edge-1:2:0", Stream: "bmp.raw", Value: []byte("raw")}, peerDownMsg(t, 2, 1, "192.0.2.1", "198.51.100.1", false)})
	if len(out) != 4 {
		t.Fatalf("got %d messages, want raw, peer-down, withdraw, tombstone", len(out))
	}
	w := out[2]
	if w.Index != 2 || !bytes.Contains(w.Value, []byte(`"id":"edge-1:2:2"`)) {
		t.Errorf("withdraw index %d, value %s", w.Index, w.Value)
	}
	for _, part := range []string{`"seq":2`, `"synthetic":true`, `"prefix":"10.0.0.0/24","path_id":7,"afi":1,"safi":1,"family":"ipv4-unicast"`, `"policy":"pre-policy","rib":"adj-rib-in"}}`} {
		if !strings.Contains(string(w.Value), part) {
			t.Errorf("withdraw lacks %s: %s", part, w.Value)
		}
	}
	if out[3].Index != 3 || out[3].Value != nil {
		t.Errorf("tombstone index %d value %q", out[3].Index, out[3].Value)
	}
}

// TestStageRewind: an announcement sequenced but not acknowledged is
// forgotten at the next session, so its re-delivery is not a duplicate.
func TestStageRewind(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, DuplicatesDrop)
	a := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, prefix: "10.0.0.0/24", attr: 1}
	b := a
	b.prefix = "10.9.0.0/16"
	sequence(t, s, 1, []*forwarder.Outgoing{a.msg(t, 1, 1)})
	sequence(t, s, 2, []*forwarder.Outgoing{b.msg(t, 2, 1)})
	if err := s.CommitThrough(1); err != nil {
		t.Fatal(err)
	}
	if err := s.Rewind(2); err != nil {
		t.Fatal(err)
	}
	if got := sequence(t, s, 2, []*forwarder.Outgoing{b.msg(t, 2, 1)}); len(got) != 2 {
		t.Fatalf("re-delivered announcement: got %q, want it and its bmp.rib value", summary(got))
	}
	if got := sequence(t, s, 3, []*forwarder.Outgoing{a.msg(t, 3, 1)}); len(got) != 0 {
		t.Fatalf("acknowledged route announced again: got %q, want it dropped", summary(got))
	}
	// A crash: the file keeps what was committed (seq 1), nothing else.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, DuplicatesDrop)
	defer s.Close()
	if err := s.Rewind(2); err != nil {
		t.Fatal(err)
	}
	if got := fileState(t, s); len(got) != 1 {
		t.Fatalf("file after crash holds %v, want only the route of seq 1", got)
	}
	if got := sequence(t, s, 2, []*forwarder.Outgoing{b.msg(t, 2, 1)}); len(got) != 2 {
		t.Fatalf("after crash: got %q", summary(got))
	}
}

// TestStageReplayAfterAckLost: the state was committed through seq 2 but
// the spool's ack (persisted later) was lost in a crash: records ≤ 2 come
// again and pass through unchanged, whatever the state says.
func TestStageReplayAfterAckLost(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, DuplicatesDrop)
	a := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, prefix: "10.0.0.0/24", attr: 1}
	sequence(t, s, 1, []*forwarder.Outgoing{a.msg(t, 1, 1)})
	sequence(t, s, 2, []*forwarder.Outgoing{peerDownMsg(t, 2, 1, "192.0.2.1", "198.51.100.1", false)})
	if err := s.CommitThrough(2); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	s = openTest(t, dir, DuplicatesDrop)
	defer s.Close()
	if err := s.Rewind(1); err != nil {
		t.Fatal(err)
	}
	if got := summary(sequence(t, s, 1, []*forwarder.Outgoing{a.msg(t, 1, 1)})); !slices.Equal(got, []string{"bmp.route.pre-policy 192.0.2.1 value"}) {
		t.Fatalf("replayed announcement: %q", got)
	}
	if got := summary(sequence(t, s, 2, []*forwarder.Outgoing{peerDownMsg(t, 2, 1, "192.0.2.1", "198.51.100.1", false)})); !slices.Equal(got, []string{"bmp.peer 192.0.2.1 peer-down"}) {
		t.Fatalf("replayed peer down: %q", got)
	}
	if got := fileState(t, s); len(got) != 0 {
		t.Fatalf("file holds %v after the peer down", got)
	}
	if got := sequence(t, s, 3, []*forwarder.Outgoing{a.msg(t, 3, 1)}); len(got) != 2 {
		t.Fatalf("announcement after the replay: %q", summary(got))
	}
}

// TestStageStale: a session lost without Peer Down (synthetic peer-down)
// makes the peer's routes stale; re-announced unchanged they are confirmed
// and not emitted, changed they are emitted, and what is still stale is
// withdrawn at the End-of-RIB of its table and family, or by the timer.
func TestStageStale(t *testing.T) {
	route := func(prefix string, table string, attr uint32) testRoute {
		return testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: table, prefix: prefix, attr: attr}
	}
	a, b, c := route("10.0.0.0/24", TableAdjInPre, 1), route("10.0.1.0/24", TableAdjInPre, 1), route("10.0.2.0/24", TableAdjInPre, 1)
	post := route("10.0.3.0/24", TableAdjInPost, 1)
	bChanged := b
	bChanged.attr = 9
	const key = "bmp.route.pre-policy 192.0.2.1"
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, s *Stage, seq uint64) []string
		want []string
	}{
		{"end-of-rib withdraws its table's stale routes", func(t *testing.T, s *Stage, seq uint64) []string {
			return summary(sequence(t, s, seq, []*forwarder.Outgoing{a.eorMsg(t, seq, 1)}))
		}, []string{key + " withdraw", key + "||198.51.100.1||10.0.2.0/24 synthetic-withdraw",
			"bmp.rib 192.0.2.1||198.51.100.1||10.0.2.0/24|adj-rib-in-pre|ipv4-unicast|0 tombstone"}},
		{"timer withdraws every stale route", func(t *testing.T, s *Stage, seq uint64) []string {
			meta, err := s.meta(a.peerKey())
			if err != nil {
				t.Fatal(err)
			}
			// A timer of an older epoch changes nothing.
			if got := sequenceRec(t, s, record.Record{Seq: seq, Kind: record.KindRIBTimer, Payload: timerPayload(a.peerKey(), meta.epoch-1)}, nil); len(got) != 0 {
				t.Fatalf("timer of an old epoch: %q", summary(got))
			}
			got := sequenceRec(t, s, record.Record{Seq: seq + 1, Kind: record.KindRIBTimer, Payload: timerPayload(a.peerKey(), meta.epoch)}, nil)
			for i, m := range got {
				// Index 0 is a record's raw message, also of a timer's.
				if m.Index != i+1 {
					t.Errorf("timer's message %d has index %d, want %d", i, m.Index, i+1)
				}
			}
			return summary(got)
		}, []string{key + "||198.51.100.1||10.0.2.0/24 synthetic-withdraw", // in the order first announced
			"bmp.rib 192.0.2.1||198.51.100.1||10.0.2.0/24|adj-rib-in-pre|ipv4-unicast|0 tombstone",
			"bmp.route.post-policy 192.0.2.1||198.51.100.1||10.0.3.0/24 synthetic-withdraw",
			"bmp.rib 192.0.2.1||198.51.100.1||10.0.3.0/24|adj-rib-in-post|ipv4-unicast|0 tombstone"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, t.TempDir(), DuplicatesDrop)
			defer s.Close()
			seq := uint64(1)
			for _, r := range []testRoute{a, b, c, post} {
				sequence(t, s, seq, []*forwarder.Outgoing{r.msg(t, seq, 1)})
				seq++
			}
			if err := s.CommitThrough(seq - 1); err != nil {
				t.Fatal(err)
			}
			rec, msgs := a.synthDown(t, seq)
			if got := summary(sequenceRec(t, s, rec, msgs)); !slices.Equal(got, []string{"bmp.peer 192.0.2.1 peer-down"}) {
				t.Fatalf("synthetic peer-down: %q", got)
			}
			seq++
			if err := s.CommitThrough(seq - 1); err != nil {
				t.Fatal(err)
			}
			if got := s.m.stale; testutilGauge(got) != 4 {
				t.Fatalf("stale routes %v, want 4", testutilGauge(got))
			}
			if got := sequence(t, s, seq, []*forwarder.Outgoing{a.msg(t, seq, 1)}); len(got) != 0 {
				t.Fatalf("stale route re-announced unchanged: %q, want nothing", summary(got))
			}
			seq++
			if got := summary(sequence(t, s, seq, []*forwarder.Outgoing{bChanged.msg(t, seq, 1)})); len(got) != 2 {
				t.Fatalf("stale route re-announced changed: %q", got)
			}
			seq++
			if err := s.CommitThrough(seq - 1); err != nil {
				t.Fatal(err)
			}
			if got := testutilGauge(s.m.stale); got != 2 {
				t.Fatalf("stale routes %v after two re-announcements, want 2", got)
			}
			if got := tc.end(t, s, seq); !slices.Equal(got, tc.want) {
				t.Fatalf("\n got %q\nwant %q", got, tc.want)
			}
			if err := s.CommitThrough(seq + 1); err != nil {
				t.Fatal(err)
			}
			want := 3
			if tc.name[0] == 't' {
				want = 2
			}
			if got := fileState(t, s); len(got) != want {
				t.Fatalf("file holds %d routes, want %d: %v", len(got), want, got)
			}
			// Re-announcing a confirmed route is a plain duplicate.
			if got := sequence(t, s, seq+2, []*forwarder.Outgoing{a.msg(t, seq+2, 1)}); len(got) != 0 {
				t.Fatalf("confirmed route announced again: %q", summary(got))
			}
		})
	}
}

// TestParseRouteLayout: reading a route event's head and tail in the
// encoder's order (parseHead, parseTail) gives what searching each field
// gives, for every route event the encoder makes of the shared captures
// (the 100k-route dump's IPv4, IPv6, pre- and post-policy, Loc-RIB and
// Add-Path; the routers' VPN, labeled and EVPN routes), and for events of
// other layouts the search is used.
func TestParseRouteLayout(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(testenv.Shared(t, "bmpdata", "raw"), "*.bmp*"))
	if err != nil || len(paths) < 2 {
		t.Fatalf("captures: %v %v", paths, err)
	}
	var msgs [][]*forwarder.Outgoing
	for _, p := range paths {
		_, m, _ := captureEvents(t, p)
		msgs = append(msgs, m...)
	}
	n := 0
	fast, slow := newParser(), newParser()
	for _, ms := range msgs {
		for _, m := range ms {
			if !bytes.HasPrefix(m.Value, routeEventPrefix) {
				continue
			}
			_, o, ok := objects(m.Value)
			if !ok {
				t.Fatalf("no route object: %s", m.Value)
			}
			h, ok := parseHead(o)
			if !ok {
				t.Fatalf("head not in the encoder's order: %s", o)
			}
			want := searchHead(o)
			want.end = h.end
			if !reflect.DeepEqual(h, want) {
				t.Fatalf("%s\nhead %+v\nsearch %+v", o, h, want)
			}
			rib, policy, ok := parseTail(o)
			if !ok || !bytes.Equal(rib, bytesField(o, `"rib":"`)) || !bytes.Equal(policy, bytesField(o, `"policy":"`)) {
				t.Fatalf("%s: tail %q %q %v", o, rib, policy, ok)
			}
			router, peerObj, routeObj, ok := routeEnvelope(m.Value)
			wantPeer, wantRoute, _ := objects(m.Value)
			if !ok || !bytes.Equal(router, bytesField(m.Value, `"router":"`)) || !bytes.Equal(peerObj, wantPeer) || !bytes.Equal(routeObj, wantRoute) {
				t.Fatalf("%s: envelope %q %q %q %v", m.Value, router, peerObj, routeObj, ok)
			}
			// With the encoder's key (read from it) and without (searched):
			// the same event.
			withKey, ok1 := fast.route(m.Value, m.Key)
			stream := string(withKey.streamKey)
			searched, ok2 := slow.route(m.Value, nil)
			if ok1 != ok2 || withKey.rk != searched.rk || withKey.peer != searched.peer || withKey.hash != searched.hash ||
				withKey.table != searched.table || withKey.family != searched.family || withKey.withdraw != searched.withdraw ||
				withKey.eor != searched.eor || withKey.pathID != searched.pathID || stream != string(searched.streamKey) {
				t.Fatalf("%s: with key %+v, searched %+v", m.Value, withKey, searched)
			}
			if ok1 && !withKey.eor && (stream != string(m.Key) || stream != string(routeStreamKey(withKey.peer, withKey.rk))) {
				t.Fatalf("%s: stream key %q, message key %q", m.Value, stream, m.Key)
			}
			n++
		}
	}
	if n < 300000 {
		t.Fatalf("%d route events compared, want the dump's 300,000", n)
	}
	// Another order: read by searching, the same fields.
	other := []byte(`{"v":1,"type":"route","id":"a:1:1","agent":"a","source":"bmp","router":"192.0.2.1","peer":{"address":"198.51.100.1","type":"global"},"route":{"afi":1,"action":"announce","safi":1,"family":"ipv4-unicast","prefix":"10.0.0.0/8","rib":"adj-rib-in","policy":"post-policy","path_id":3}}`)
	e, ok := parseRoute(other)
	if !ok || e.rk != "adj-rib-in-post|ipv4-unicast||10.0.0.0/8|3" || e.peer != "192.0.2.1|global||198.51.100.1" || e.afi != 1 || e.safi != 1 || e.withdraw {
		t.Fatalf("fields out of order: %+v %v", e, ok)
	}
	// A withdraw whose action is not the first field.
	w, ok := parseRoute(bytes.Replace(other, []byte(`"action":"announce"`), []byte(`"action":"withdraw"`), 1))
	if !ok || !w.withdraw || w.rk != e.rk {
		t.Fatalf("withdraw out of order: %+v %v", w, ok)
	}
}
