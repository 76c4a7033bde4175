package rib

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
)

const testAgent = "edge-1"

// testRoute describes one route event the way the BMP encoder would make it.
type testRoute struct {
	router, peer, peerRD string
	table                string
	rd                   string // a VPN route's distinguisher (vpnv4-unicast)
	prefix               string
	pathID               uint32
	withdraw             bool
	attr                 uint32 // stands for the attributes: a MED
}

func (r testRoute) event(seq uint64, index int) record.Event {
	rib, policy := tableRIB(r.table)
	typ := "global"
	addr := r.peer
	if r.table == TableLocRIB {
		typ, addr = "loc-rib", "0.0.0.0"
	} else if r.peerRD != "" {
		typ = "rd-instance"
	}
	ev := record.Event{V: 1, Type: "route", ID: fmt.Sprintf("%s:%d:%d", testAgent, seq, index), Agent: testAgent, Source: "bmp",
		Router: r.router, Seq: seq, ReceivedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Peer:  &record.Peer{Address: addr, AS: 64500, RD: r.peerRD, Type: typ},
		Route: &record.Route{Prefix: r.prefix, PathID: r.pathID, AFI: 1, SAFI: 1, Family: "ipv4-unicast", Policy: policy, RIB: rib}}
	if r.rd != "" {
		ev.Route.SAFI, ev.Route.Family, ev.Route.RD = 128, "vpnv4-unicast", r.rd
	}
	if r.withdraw {
		ev.Route.Action = "withdraw"
	} else {
		ev.Route.Action = "announce"
		med := r.attr
		ev.Route.NextHop, ev.Route.Origin, ev.Route.ASPath, ev.Route.MED = "192.0.2.1", "igp", []uint32{64500}, &med
	}
	return ev
}

func (r testRoute) msg(t testing.TB, seq uint64, index int) *forwarder.Outgoing {
	ev := r.event(seq, index)
	v, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	return &forwarder.Outgoing{Seq: seq, Index: index, ID: ev.ID, Stream: tableStream(r.table), Key: []byte(r.router), Value: v}
}

// peerKeyOf is the stage's peer key of the route's peer.
func (r testRoute) peerKey() string {
	if r.table == TableLocRIB {
		return peerKey(r.router, "loc-rib", r.peerRD, "0.0.0.0")
	}
	typ := "global"
	if r.peerRD != "" {
		typ = "rd-instance"
	}
	return peerKey(r.router, typ, r.peerRD, r.peer)
}

func (r testRoute) rkey() string {
	return r.table + "|ipv4-unicast||" + r.prefix + "|" + strconv.FormatUint(uint64(r.pathID), 10)
}

// eorMsg is an End-of-RIB marker of ipv4-unicast in the route's table.
func (r testRoute) eorMsg(t testing.TB, seq uint64, index int) *forwarder.Outgoing {
	r.withdraw = true
	ev := r.event(seq, index)
	ev.Route.Prefix, ev.Route.PathID, ev.Route.EndOfRIB = "", 0, true
	v, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	return &forwarder.Outgoing{Seq: seq, Index: index, ID: ev.ID, Stream: tableStream(r.table), Key: []byte(r.router), Value: v}
}

// synthDownRec is the record of a synthetic peer-down of r's peer.
func (r testRoute) synthDown(t testing.TB, seq uint64) (record.Record, []*forwarder.Outgoing) {
	m := peerDownMsg(t, seq, 1, r.router, r.peer, r.table == TableLocRIB)
	m.Value = bytes.Replace(m.Value, []byte(`"type":"global"}`), []byte(`"type":"global","synthetic":true}`), 1)
	m.Value = bytes.Replace(m.Value, []byte(`"type":"loc-rib"}`), []byte(`"type":"loc-rib","synthetic":true}`), 1)
	return record.Record{Seq: seq, Kind: record.KindBMPSyntheticPeerDown, Time: time.Now()}, []*forwarder.Outgoing{m}
}

// peerDownMsg is a peer-down event of an Adj-RIB peer (type global) or,
// with locRIB, of the router's Loc-RIB instance.
func peerDownMsg(t testing.TB, seq uint64, index int, router, peer string, locRIB bool) *forwarder.Outgoing {
	typ, addr := "global", peer
	if locRIB {
		typ, addr = "loc-rib", "0.0.0.0"
	}
	ev := record.Event{V: 1, Type: "peer-down", ID: fmt.Sprintf("%s:%d:%d", testAgent, seq, index), Agent: testAgent, Source: "bmp",
		Router: router, Seq: seq, ReceivedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Peer: &record.Peer{Address: addr, AS: 64500, Type: typ}, Data: map[string]any{"reason": 2}}
	v, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	return &forwarder.Outgoing{Seq: seq, Index: index, ID: ev.ID, Stream: "bmp.peer", Key: []byte(router), Value: v}
}

// sequence runs one BMP record through the stage and returns what it
// emitted, with ids filled in as the forwarder would.
func sequence(t testing.TB, s *Stage, seq uint64, msgs []*forwarder.Outgoing) []*forwarder.Outgoing {
	t.Helper()
	return sequenceRec(t, s, record.Record{Seq: seq, Kind: record.KindBMP}, msgs)
}

// sequenceRec is sequence for any record.
func sequenceRec(t testing.TB, s *Stage, rec record.Record, msgs []*forwarder.Outgoing) []*forwarder.Outgoing {
	t.Helper()
	// Copies: the stage may change a message (mark), and a re-delivery
	// starts from the encoder's output again.
	return sequenceIn(t, s, rec, copyMsgs(msgs))
}

// copyMsgs copies each message.
func copyMsgs(msgs []*forwarder.Outgoing) []*forwarder.Outgoing {
	in := make([]*forwarder.Outgoing, len(msgs))
	for i, m := range msgs {
		c := *m
		in[i] = &c
	}
	return in
}

// sequenceIn is sequenceRec for messages the stage may keep and change.
func sequenceIn(t testing.TB, s *Stage, rec record.Record, in []*forwarder.Outgoing) []*forwarder.Outgoing {
	t.Helper()
	seq := rec.Seq
	var out []*forwarder.Outgoing
	err := s.Sequence(rec, in, func(m *forwarder.Outgoing) error {
		if m.ID == "" {
			m.Seq = seq
			m.ID = forwarder.MessageID(testAgent, seq, m.Index)
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func openTest(t testing.TB, dir, dups string) *Stage {
	t.Helper()
	return openTestNodes(t, dir, dups, 0)
}

// openTestNodes is openTest with commit parts bounded to partNodes pages
// (0: the default).
func openTestNodes(t testing.TB, dir, dups string, partNodes int64) *Stage {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Duplicates = true, dups
	s, err := Open(Options{Config: cfg, Dir: dir, AgentID: testAgent, maxPartNodes: partNodes})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fileState reads every route of the file: peer|route key → attribute hash.
func fileState(t testing.TB, s *Stage) map[string]uint64 {
	t.Helper()
	got := map[string]uint64{}
	err := s.st.forEachPeer(func(peer string) error {
		from := uint64(0)
		for {
			chunk, err := s.st.scan(peer, from, 100)
			if err != nil {
				return err
			}
			for _, r := range chunk {
				if _, dup := got[peer+"#"+r.rk]; dup {
					return fmt.Errorf("peer %s holds route %s twice", peer, r.rk)
				}
				got[peer+"#"+r.rk] = r.val.hash
				if pos, v, ok := s.ix.get(s.ix.hash(peer, r.rk)); !ok || pos != r.pos || v != r.val {
					return fmt.Errorf("index disagrees with the file on %s %s: %d %+v %v, file %d %+v", peer, r.rk, pos, v, ok, r.pos, r.val)
				}
			}
			if len(chunk) < 100 {
				break
			}
			from = chunk[len(chunk)-1].pos + 1
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.ix.mu.RLock()
	indexed := s.ix.used
	s.ix.mu.RUnlock()
	if indexed != uint64(len(got)) {
		t.Fatalf("index holds %d routes, the file %d", indexed, len(got))
	}
	return got
}

func testutilGauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

func testutilCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// ribKey is a route's bmp.rib key, as the stage makes it.
func ribKey(peer, rk string) []byte {
	return appendRIBKey(nil, peer, rk)
}

// crashClose closes s as a crash leaves it: the index's file with no mark
// of a clean stop, so the next open rebuilds it.
func crashClose(s *Stage) {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.done.Wait()
		s.m.unregister(s.reg)
		s.ix.release()
		s.closeErr = s.st.close()
	})
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkOverlayCounts checks Stage.ovCount against the overlay's map.
func checkOverlayCounts(t testing.TB, s *Stage) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var want [1 << 16]uint16
	n := 0
	s.routes.each(func(h0, _ uint64) {
		want[ovSlot(ixHash{h0})]++
		n++
	})
	if n != s.routes.len() {
		t.Fatalf("overlay holds %d routes, counts %d", n, s.routes.len())
	}
	if want != *s.ovCount {
		t.Fatalf("overlay counts disagree with its %d routes", n)
	}
}
