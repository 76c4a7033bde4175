package bmp

import (
	"strconv"

	"github.com/bgpedge/bgpedge/record"
)

// minFastRM is the shortest Route Monitoring message the fast path reads:
// common and per-peer headers, and a BGP header.
const minFastRM = HeaderLen + PerPeerHeaderLen + bgpHeaderLen

// encodeFast emits the outputs of a Route Monitoring record the way Encode
// does through the library path, or emits nothing and returns false when
// the message needs the library.
func (e *Encoder) encodeFast(rec record.Record, emit func(Output)) bool {
	msg := rec.Payload
	if rec.Kind != record.KindBMP || len(msg) < minFastRM || msg[0] != 3 || MsgType(msg[5]) != MsgRouteMonitoring {
		return false
	}
	if n, err := CheckHeader(msg, MaxMessageBytesLimit); err != nil || n != len(msg) {
		return false
	}
	ph, err := ParsePeerHeader(msg)
	if err != nil {
		return false
	}
	typ, body, _, err := bgpBody(msg[HeaderLen+PerPeerHeaderLen:])
	if err != nil || typ != bgpMsgUpdate {
		return false
	}
	// The pool keeps a scratch per P (CPU): the forwarder's encoder
	// goroutines each find their own, whose buffers and output chunk are
	// in that CPU's cache. Only a call that finds its P's slot empty
	// (after garbage collections emptied the pool) takes the spare, kept
	// warm beside it, and puts it back; taking the spare first, as
	// before, moved it from one CPU to the other about every other
	// message, with its buffers.
	st, pooled := e.pool.Get().(*fastState)
	if !pooled {
		if st = e.spare.Swap(nil); st == nil {
			st = &fastState{}
		}
	}
	defer func() {
		if pooled || !e.spare.CompareAndSwap(nil, st) {
			e.pool.Put(st)
		}
	}()
	st.reset()
	router := st.routerOf(rec)

	dir, rib, policy, stream := dirIn, "adj-rib-in", "pre-policy", StreamRoutePrePolicy
	switch {
	case ph.Type == PeerTypeLocRIB:
		dir, rib, policy, stream = dirLocRIB, "loc-rib", "", StreamRouteLocRIB
	case ph.AdjRIBOut():
		dir, rib, stream = dirOut, "adj-rib-out", StreamRouteAdjRIBOut
	}
	if policy != "" && ph.PostPolicy() {
		policy = "post-policy"
		if stream == StreamRoutePrePolicy {
			stream = StreamRoutePostPolicy
		}
	}
	st.peerOf(msg, router, &ph)
	state, known := e.dec.peers.lookupPeer(&st.peer, rec.Seq)
	as2 := ph.TwoByteAS()
	var addPath []uint32
	if known {
		as2 = state.twoByteAS(as2)
		switch dir {
		case dirIn:
			addPath = state.In
		case dirOut:
			addPath = state.Out
		case dirLocRIB:
			addPath = state.LocRIB
		}
	}
	if !st.fastUpdate(body, as2, addPath) {
		return false
	}

	// Shared parts: the envelope after the id, and the attributes.
	b := st.frag[:0]
	b = append(b, `,"agent":`...)
	b = appendJSONString(b, e.agentID)
	b = append(b, `,"source":"bmp"`...)
	if router != "" {
		b = append(b, `,"router":`...)
		b = appendJSONString(b, router)
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, rec.Seq, 10)
	b = append(b, `,"received_at":`...)
	var ok bool
	if b, ok = st.times[0].appendJSON(b, rec.Time); !ok {
		return false
	}
	if b, ok = appendTimestamp(b, &st.times[1], `,"timestamp":`, ph.Timestamp); !ok {
		return false
	}
	b = append(b, `,"peer":`...)
	b = append(b, st.peer.json...)
	b = append(b, `,"route":{"action":"`...)
	envEnd := len(b)
	if b, ok = st.appendAttrsJSON(b); !ok {
		return false
	}
	attrsEnd := len(b)
	if len(st.lib.Attributes) > 0 {
		b = appendOtherAttrsJSON(b, st.lib.Attributes)
	}
	otherEnd := len(b)
	if policy != "" {
		b = append(b, `,"policy":"`...)
		b = append(b, policy...)
		b = append(b, '"')
	}
	b = append(b, `,"rib":"`...)
	b = append(b, rib...)
	b = append(b, `"}}`...)
	st.frag = b
	env, attrs, other, tail := b[:envEnd], b[envEnd:attrsEnd], b[attrsEnd:otherEnd], b[otherEnd:]

	// The outputs are written straight into the current output chunk
	// when they fit in what is left of it (the common case), else into
	// the scratch buffer append grew them into, and copied from there into
	// a new chunk. Consumers keep them until the sink has them.
	st.ensureChunk(e.outs, chunkReserve)
	out := st.chunk[:0]
	ends := st.ends[:0]
	if e.enc.Raw && !e.enc.OpenBMPEnvelope {
		out = append(out, router...)
		ends = append(ends, len(out))
	}
	for i := range st.routes {
		r := &st.routes[i]
		fam := familyName(r.afi, r.safi)
		out = append(out, `{"v":1,"type":"route","id":`...)
		if e.agentPlain {
			out = append(out, '"')
			out = append(out, e.agentID...)
			out = append(out, ':')
			out = strconv.AppendUint(out, rec.Seq, 10)
			out = append(out, ':')
			out = strconv.AppendInt(out, int64(i+1), 10)
			out = append(out, '"')
		} else {
			out = appendJSONString(out, ID(e.agentID, rec.Seq, i+1))
		}
		out = append(out, env...)
		if r.announce {
			out = append(out, "announce\""...)
		} else {
			out = append(out, "withdraw\""...)
		}
		if r.prefix.IsValid() {
			out = append(out, `,"prefix":"`...)
			out = r.prefix.AppendTo(out)
			out = append(out, '"')
		}
		if r.pathID != 0 {
			out = append(out, `,"path_id":`...)
			out = strconv.AppendUint(out, uint64(r.pathID), 10)
		}
		out = append(out, `,"afi":`...)
		out = strconv.AppendUint(out, uint64(r.afi), 10)
		out = append(out, `,"safi":`...)
		out = strconv.AppendUint(out, uint64(r.safi), 10)
		out = append(out, `,"family":`...)
		out = append(out, '"')
		out = append(out, fam...) // family names need no escaping
		out = append(out, '"')
		if r.eor {
			out = append(out, `,"end_of_rib":true`...)
		}
		if r.announce {
			nh := st.attrs.nextHop
			if r.mp {
				nh = r.nextHop
			}
			if nh.IsValid() {
				out = append(out, `,"next_hop":"`...)
				out = nh.AppendTo(out)
				out = append(out, '"')
			}
			out = append(out, attrs...)
		}
		if r.labels[1] > r.labels[0] {
			out = append(out, `,"labels":`...)
			out = appendJSONUints(out, st.labels[r.labels[0]:r.labels[1]])
		}
		if r.hasRD {
			out = append(out, `,"rd":"`...)
			out = appendRD(out, r.rd)
			out = append(out, '"')
		}
		if r.announce {
			out = append(out, other...)
		}
		out = append(out, tail...)
		ends = append(ends, len(out))
		// The key: eventKey's.
		out = append(out, st.peer.keyPrefix...)
		if r.eor {
			out = append(out, fam...)
		} else {
			if r.hasRD {
				out = appendRD(out, r.rd)
			}
			out = append(out, '|')
			out = r.prefix.AppendTo(out)
		}
		ends = append(ends, len(out))
	}
	st.ends = ends
	var arena []byte
	if len(out) > 0 && len(out) <= len(st.chunk) && &out[0] == &st.chunk[0] {
		arena = st.carve(len(out))
	} else {
		// It outgrew the chunk: append moved it to a buffer of its own.
		st.ensureChunk(e.outs, max(len(out), chunkReserve))
		arena = st.carve(len(out))
		copy(arena, out)
	}
	owner := st.cur
	n := len(st.routes)
	if e.enc.Raw && !e.enc.OpenBMPEnvelope {
		n++
	}
	owner.hold(n)
	start := 0
	next := func() []byte {
		end := ends[0]
		ends = ends[1:]
		v := arena[start:end:end]
		start = end
		return v
	}
	if e.enc.Raw {
		if e.enc.OpenBMPEnvelope {
			e.emitRaw(rec, router, emit)
		} else {
			emit(Output{Stream: StreamRaw, Key: next(), Value: rec.Payload, Index: 0, Owner: owner})
		}
	}
	for i := range st.routes {
		v := next()
		emit(Output{Stream: stream, Key: next(), Value: v, Index: i + 1, Owner: owner})
	}
	e.dec.m.rmDecoded.Inc()
	e.dec.m.routesByRIB(rib).Add(float64(len(st.routes)))
	e.fastHits.Add(1)
	return true
}

// fastPeer is what the fast path derives from a per-peer header, kept for
// the next message of the same peer.
type fastPeer struct {
	router    string
	hdr       [34]byte // per-peer header up to the timestamp
	storeKey  []byte   // peerStoreKey
	json      []byte   // peerOf, as JSON
	keyPrefix []byte   // eventKey up to the route: router|peer RD|peer address|

	// The peer's state versions as of the store's gen (lookupPeer);
	// versOK false: not looked up since the peer changed.
	vers   []peerVersion
	gen    uint64
	versOK bool
}

func (st *fastState) peerOf(msg []byte, router string, ph *PeerHeader) {
	p := &st.peer
	hdr := msg[HeaderLen : HeaderLen+34]
	if p.json != nil && router == p.router && string(hdr) == string(p.hdr[:]) {
		return
	}
	p.router, p.hdr = router, [34]byte(hdr)
	p.storeKey = appendPeerStoreKey(p.storeKey[:0], router, ph)
	p.vers, p.versOK = nil, false
	p.json = appendPeerJSON(p.json[:0], ph)
	kb := append(p.keyPrefix[:0], router...)
	kb = append(kb, '|')
	if ph.Distinguisher != ([8]byte{}) {
		kb = appendRD(kb, ph.Distinguisher)
	}
	kb = append(kb, '|')
	kb = ph.Address.AppendTo(kb)
	p.keyPrefix = append(kb, '|')
}
