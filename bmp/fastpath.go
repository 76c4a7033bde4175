package bmp

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strconv"
	"time"

	"github.com/bgpedge/bgpedge/internal/bgpattr"
	"github.com/bgpedge/bgpedge/record"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// The fast path turns the hot message, Route Monitoring, into JSON events
// without the libraries: the per-peer header and the UPDATE are walked in
// place and the events appended into one buffer per message. It must give
// the bytes the library path (bio-rd, GoBGP, encoding/json) gives for the
// same input; TestFastPathMatchesLibrary and FuzzFastPath hold it to that.
// Whatever it does not know, or doubts (a flag, a length, a family, an
// attribute that GoBGP might read differently), makes it give up before
// emitting anything, and the library path decodes the message.

// fastRoute is one route event of a message, before rendering. Announced
// routes share the message's attributes.
type fastRoute struct {
	announce bool
	eor      bool
	prefix   netip.Prefix
	pathID   uint32
	afi      uint16
	safi     uint8
	nextHop  netip.Addr // the MP_REACH next hop; classic routes use NEXT_HOP
	mp       bool
	labels   [2]int // st.labels[labels[0]:labels[1]]
	rd       [8]byte
	hasRD    bool
}

// fastAttrs are the path attributes of one UPDATE, as offsets into it.
type fastAttrs struct {
	origin      int // -1: none
	asPath      []byte
	hasASPath   bool
	nextHop     netip.Addr
	med         uint32
	hasMED      bool
	localPref   uint32
	hasLP       bool
	atomic      bool
	aggregator  []byte
	communities []byte
	originator  []byte
	clusterList []byte
	extComm     []byte
	large       []byte
	reach       []byte
	unreach     []byte
	// libAny: the library decoded some attributes, into fastState's lib
	// and as.
	libAny bool
}

// fastState is the scratch of one Encode call on the fast path, reused
// through the encoder's pool.
type fastState struct {
	attrs fastAttrs
	peer  fastPeer
	// lib holds what the library decoded of the attributes the fast path
	// leaves to it (AS4_PATH, AS4_AGGREGATOR and those kept raw), as the
	// AS-related ones.
	lib     record.Route
	as      asAttrs
	routes  []fastRoute
	labels  []uint32
	asns    []uint32
	segs    []int // segment boundaries in asns, two per segment: type, end
	frag    []byte
	ends    []int
	as2     bool
	times   [2]timeCache // receive time, per-peer header time
	chunk   []byte       // what is left of the current output chunk (carve)
	cur     *outChunk    // the chunk chunk is the rest of; nil before the first
	source  string
	router  string
	extStrs []string
}

// outputChunk is the size of the chunks carve cuts outputs from: about a
// hundred JSON route events, small enough that the messages still held
// keep little else alive.
const outputChunk = 32 << 10

func (st *fastState) reset() {
	if st.attrs.libAny {
		st.lib, st.as = record.Route{}, asAttrs{}
	}
	st.attrs = fastAttrs{origin: -1}
	st.routes = st.routes[:0]
	st.labels = st.labels[:0]
	st.asns = st.asns[:0]
	st.segs = st.segs[:0]
	st.frag = st.frag[:0]
	st.ends = st.ends[:0]
	st.extStrs = st.extStrs[:0]
}

// routerOf is RouterAddress, remembered for the last source seen when the
// address came from the source alone (else it depends on the key too).
func (st *fastState) routerOf(rec record.Record) string {
	if st.source != "" && rec.Source == st.source {
		return st.router
	}
	router := RouterAddress(rec)
	if _, err := netip.ParseAddrPort(rec.Source); err == nil {
		st.source, st.router = rec.Source, router
	} else if _, err := netip.ParseAddr(rec.Source); err == nil {
		st.source, st.router = rec.Source, router
	}
	return router
}

// handledFamily reports the families the fast path splits into prefixes,
// with their event names.
func handledFamily(afi uint16, safi uint8) (string, bool) {
	switch uint32(afi)<<8 | uint32(safi) {
	case 1<<8 | 1:
		return "ipv4-unicast", true
	case 1<<8 | 2:
		return "ipv4-multicast", true
	case 1<<8 | 4:
		return "ipv4-labeled-unicast", true
	case 1<<8 | 128:
		return "vpnv4-unicast", true
	case 1<<8 | 129:
		return "vpnv4-multicast", true
	case 2<<8 | 1:
		return "ipv6-unicast", true
	case 2<<8 | 2:
		return "ipv6-multicast", true
	case 2<<8 | 4:
		return "ipv6-labeled-unicast", true
	case 2<<8 | 128:
		return "vpnv6-unicast", true
	case 2<<8 | 129:
		return "vpnv6-multicast", true
	}
	return "", false
}

// familyName is record.FamilyName without building the common names.
func familyName(afi uint16, safi uint8) string {
	if n, ok := handledFamily(afi, safi); ok {
		return n
	}
	return record.FamilyName(afi, safi)
}

// attrFlagsOK reports flags exactly as RFC 4271 and GoBGP expect them for a
// type the fast path decodes (extended length aside, partial not set).
func attrFlagsOK(typ, flags uint8) bool {
	var want uint8
	switch typ {
	case attrOrigin, attrASPath, attrNextHop, attrLocalPref, attrAtomicAggr:
		want = 0x40
	case attrMED, attrOriginator, attrClusterList, attrMPReach, attrMPUnreach:
		want = 0x80
	case attrAggregator, attrCommunities, attrExtComm, attrLargeComm:
		want = 0xc0
	default:
		return false
	}
	return flags&^attrFlagExtLen == want
}

// fastUpdate decodes an UPDATE body into st.routes with the given ASN width
// and Add-Path families; false means the library must decode it.
func (st *fastState) fastUpdate(body []byte, as2 bool, addPath []uint32) bool {
	st.as2 = as2
	if len(body) < 4 {
		return false
	}
	wl := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) < wl+2 {
		return false
	}
	withdrawn, body := body[:wl], body[wl:]
	al := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) < al {
		return false
	}
	attrs, nlri := body[:al], body[al:]
	a := &st.attrs
	var seen [4]uint64
	nAttrs := 0
	for len(attrs) > 0 {
		if len(attrs) < 3 {
			return false
		}
		flags, typ := attrs[0], attrs[1]
		hl, vl := 3, int(attrs[2])
		if flags&attrFlagExtLen != 0 {
			if len(attrs) < 4 {
				return false
			}
			hl, vl = 4, int(binary.BigEndian.Uint16(attrs[2:4]))
		}
		if len(attrs) < hl+vl {
			return false
		}
		v, whole := attrs[hl:hl+vl], attrs[:hl+vl]
		attrs = attrs[hl+vl:]
		nAttrs++
		if seen[typ>>6]&(1<<(typ&63)) != 0 {
			return false // a repeated attribute: left to the library
		}
		seen[typ>>6] |= 1 << (typ & 63)
		if typ == attrPrefixSID {
			return false // changes how GoBGP reads label stacks
		}
		if !attrFlagsOK(typ, flags) {
			switch typ {
			case attrOrigin, attrASPath, attrNextHop, attrLocalPref, attrAtomicAggr, attrMED, attrOriginator,
				attrClusterList, attrMPReach, attrMPUnreach, attrAggregator, attrCommunities, attrExtComm, attrLargeComm:
				return false
			}
			// Every other attribute is decoded by the library, one at a time,
			// exactly as the library path does.
			if !a.libAny {
				a.libAny = true
				st.as.twoByte = as2
			}
			ra := rawAttr{flags: flags, typ: typ, value: v, whole: whole}
			if err := applyAttr(&st.lib, &ra, &bgp.MarshallingOption{Use2ByteAS: as2}, &st.as); err != nil {
				return false
			}
			continue
		}
		switch typ {
		case attrOrigin:
			if vl != 1 {
				return false
			}
			a.origin = int(v[0])
		case attrASPath:
			if !validASPath(v, as2) {
				return false
			}
			a.asPath, a.hasASPath = v, true
		case attrNextHop:
			if vl != 4 && vl != 16 {
				return false
			}
			a.nextHop, _ = netip.AddrFromSlice(v)
		case attrMED:
			if vl != 4 {
				return false
			}
			a.med, a.hasMED = binary.BigEndian.Uint32(v), true
		case attrLocalPref:
			if vl != 4 {
				return false
			}
			a.localPref, a.hasLP = binary.BigEndian.Uint32(v), true
		case attrAtomicAggr:
			if vl != 0 {
				return false
			}
			a.atomic = true
		case attrAggregator:
			if vl != 6 && vl != 8 {
				return false
			}
			a.aggregator = v
		case attrCommunities:
			if vl%4 != 0 {
				return false
			}
			a.communities = v
		case attrOriginator:
			if vl != 4 {
				return false
			}
			a.originator = v
		case attrClusterList:
			if vl%4 != 0 {
				return false
			}
			a.clusterList = v
		case attrExtComm:
			if vl%8 != 0 {
				return false
			}
			a.extComm = v
		case attrLargeComm:
			if vl%12 != 0 {
				return false
			}
			a.large = v
		case attrMPReach:
			a.reach = v
		case attrMPUnreach:
			a.unreach = v
		}
	}
	if a.libAny && st.as.otherWidth {
		return false
	}
	// Classic IPv4 unicast: withdrawals, then announcements.
	v4AddPath := hasFamily(addPath, bgp.RF_IPv4_UC)
	if !st.ipv4Routes(withdrawn, v4AddPath, false) || !st.ipv4Routes(nlri, v4AddPath, true) {
		return false
	}
	if a.reach != nil && !st.mpRoutes(a.reach, true, addPath) {
		return false
	}
	if a.unreach != nil && !st.mpRoutes(a.unreach, false, addPath) {
		return false
	}
	if len(withdrawn) == 0 && len(nlri) == 0 && a.reach == nil {
		if nAttrs == 0 {
			st.routes = append(st.routes, fastRoute{eor: true, afi: 1, safi: 1})
		} else if nAttrs == 1 && len(a.unreach) == 3 {
			st.routes = append(st.routes, fastRoute{eor: true, afi: binary.BigEndian.Uint16(a.unreach), safi: a.unreach[2]})
		}
	}
	return true
}

func hasFamily(fams []uint32, f bgp.Family) bool {
	for _, x := range fams {
		if x == uint32(f) {
			return true
		}
	}
	return false
}

// validASPath checks an AS_PATH as GoBGP does for the given width.
func validASPath(v []byte, as2 bool) bool {
	if len(v) == 0 {
		return true
	}
	if len(v)%2 != 0 {
		return false
	}
	w := 4
	if as2 {
		w = 2
	}
	for len(v) > 0 {
		if len(v) < 2 || v[0] == 0 || v[0] > 4 || v[1] == 0 {
			return false
		}
		n := int(v[1]) * w
		if len(v)-2 < n {
			return false
		}
		v = v[2+n:]
	}
	return true
}

// ipv4Routes reads classic IPv4 unicast NLRI; a /0 prefix is left to the
// library, which then weighs the other Add-Path readings.
func (st *fastState) ipv4Routes(b []byte, addPath, announce bool) bool {
	for len(b) > 0 {
		var id uint32
		if addPath {
			if len(b) < 5 {
				return false
			}
			id, b = binary.BigEndian.Uint32(b), b[4:]
		}
		bits := int(b[0])
		n := (bits + 7) / 8
		if bits == 0 || bits > 32 || len(b) < 1+n {
			return false
		}
		var x [4]byte
		copy(x[:], b[1:1+n])
		st.routes = append(st.routes, fastRoute{announce: announce, prefix: netip.PrefixFrom(netip.AddrFrom4(x), bits).Masked(), pathID: id, afi: 1, safi: 1})
		b = b[1+n:]
	}
	return true
}

// mpRoutes reads an MP_REACH_NLRI or MP_UNREACH_NLRI value as GoBGP does.
func (st *fastState) mpRoutes(v []byte, reach bool, addPath []uint32) bool {
	if len(v) < 3 {
		return false
	}
	afi, safi := binary.BigEndian.Uint16(v), v[2]
	v = v[3:]
	if _, ok := handledFamily(afi, safi); !ok {
		// An empty MP_UNREACH of any family is an End-of-RIB (or nothing).
		return !reach && len(v) == 0
	}
	var nh netip.Addr
	if reach {
		if len(v) < 1 || len(v) < 1+int(v[0]) {
			return false
		}
		nhb := v[1 : 1+int(v[0])]
		v = v[1+int(v[0]):]
		switch len(nhb) {
		case 4, 16, 32:
		case 12, 24, 48:
			nhb = nhb[8:]
		default:
			return false
		}
		if len(nhb) == 4 {
			nh = netip.AddrFrom4([4]byte(nhb))
		} else {
			nh = netip.AddrFrom16([16]byte(nhb[:16]))
		}
		if len(v) == 0 {
			return false // no reserved byte
		}
		v = v[1:]
	}
	withID := hasFamily(addPath, bgp.NewFamily(afi, safi))
	addrLen := 4
	if afi == 2 {
		addrLen = 16
	}
	for len(v) > 0 {
		r := fastRoute{announce: reach, afi: afi, safi: safi, nextHop: nh, mp: true}
		if withID {
			if len(v) < 4 {
				return false
			}
			r.pathID, v = binary.BigEndian.Uint32(v), v[4:]
		}
		if len(v) < 1 {
			return false
		}
		bits := int(v[0])
		p := v[1:]
		used := 1
		if safi == 4 || safi == 128 || safi == 129 {
			start := len(st.labels)
			n, ok := st.labelStack(p)
			if !ok || bits-24*n < 0 || len(p) < 3*n {
				return false
			}
			end := len(st.labels)
			// RFC 8277 2.4, RFC 3107 3: the label field of a withdrawal
			// means nothing, and 0x800000 is not a label.
			if !reach || end-start == 1 && st.labels[start] == withdrawLabel {
				st.labels = st.labels[:start]
				end = start
			}
			r.labels = [2]int{start, end}
			p = p[3*n:]
			bits -= 24 * n
			used += 3 * n
			if safi != 4 {
				if len(p) < 8 {
					return false
				}
				switch binary.BigEndian.Uint16(p) {
				case 0, 1, 2:
				default:
					return false
				}
				r.rd, r.hasRD = [8]byte(p[:8]), true
				p = p[8:]
				bits -= 64
				used += 8
			}
		}
		if bits <= 0 || bits > addrLen*8 {
			return false // a /0 is left to the library's Add-Path inference
		}
		n := (bits + 7) / 8
		if len(p) < n {
			return false
		}
		var x [16]byte
		copy(x[:], p[:n])
		if rem := bits % 8; rem != 0 {
			mask := 0xff00 >> rem
			x[n-1] &= byte(mask)
		}
		if addrLen == 4 {
			r.prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte(x[:4])), bits)
		} else {
			r.prefix = netip.PrefixFrom(netip.AddrFrom16(x), bits)
		}
		v = v[used+n:]
		st.routes = append(st.routes, r)
	}
	return true
}

// labelStack reads an MPLS label stack as GoBGP's MPLSLabelStack does,
// appending to st.labels; n is the number of 3-byte labels it spans.
func (st *fastState) labelStack(p []byte) (n int, ok bool) {
	start := len(st.labels)
	for len(p) >= 3 {
		l := uint32(p[0])<<16 | uint32(p[1])<<8 | uint32(p[2])
		if l == withdrawLabel || l == 0 {
			st.labels = append(st.labels[:start], l)
			return 1, true
		}
		p = p[3:]
		st.labels = append(st.labels, l>>4)
		if l&1 == 1 {
			return len(st.labels) - start, true
		}
	}
	if len(st.labels) > start {
		return 0, false
	}
	return 0, true
}

// appendAttrsJSON renders the announced routes' shared attributes, from
// "origin" to "cluster_list", as encoding/json orders them.
func (st *fastState) appendAttrsJSON(b []byte) ([]byte, bool) {
	a := &st.attrs
	if a.origin >= 0 {
		b = append(b, `,"origin":`...)
		b = appendJSONString(b, originName(uint8(a.origin)))
	}
	// The aggregator comes later in the key order: remember it.
	var (
		aggrStr string
		aggr    bgpattr.Aggregator
		hasAggr bool
	)
	if a.libAny && (st.as.hasAS4Path || st.as.as4Aggr != nil) {
		// AS4 reconciliation: built the library's way, with its helper.
		as := st.as
		if a.hasASPath {
			as.path, as.hasPath = st.segments(), true
		}
		if a.aggregator != nil {
			ag := aggregatorOf(a.aggregator)
			as.aggr, as.aggr2 = &ag, len(a.aggregator) == 6
		}
		var r record.Route
		as.apply(&r)
		aggrStr = r.Aggregator
		if r.ASPath != nil {
			b = append(b, `,"as_path":`...)
			b = appendJSONUints(b, r.ASPath)
		}
		if r.ASPathSegments != nil {
			b = append(b, `,"as_path_segments":[`...)
			for i, s := range r.ASPathSegments {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, `{"type":`...)
				b = appendJSONString(b, s.Type)
				b = append(b, `,"asns":`...)
				b = appendJSONUints(b, s.ASNs)
				b = append(b, '}')
			}
			b = append(b, ']')
		}
	} else {
		if a.hasASPath {
			st.segments()
			b = st.appendASPath(b)
		}
		if a.aggregator != nil {
			aggr, hasAggr = aggregatorOf(a.aggregator), true
		}
	}
	if len(a.communities) > 0 {
		b = append(b, `,"communities":[`...)
		for i, c := 0, a.communities; len(c) >= 4; i, c = i+1, c[4:] {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint16(c)), 10)
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint16(c[2:])), 10)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	if len(a.extComm) > 0 {
		st.extStrs = st.extStrs[:0]
		for c := a.extComm; len(c) >= 8; c = c[8:] {
			e, err := bgp.ParseExtended(c)
			if err != nil {
				return b, false
			}
			st.extStrs = append(st.extStrs, extCommunityString(e))
		}
		b = append(b, `,"extended_communities":`...)
		b = appendJSONStrings(b, st.extStrs)
	}
	if len(a.large) > 0 {
		b = append(b, `,"large_communities":[`...)
		for i, c := 0, a.large; len(c) >= 12; i, c = i+1, c[12:] {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint32(c)), 10)
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint32(c[4:])), 10)
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint32(c[8:])), 10)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	if a.hasMED {
		b = append(b, `,"med":`...)
		b = strconv.AppendUint(b, uint64(a.med), 10)
	}
	if a.hasLP {
		b = append(b, `,"local_pref":`...)
		b = strconv.AppendUint(b, uint64(a.localPref), 10)
	}
	if a.atomic {
		b = append(b, `,"atomic_aggregate":true`...)
	}
	if aggrStr != "" {
		b = append(b, `,"aggregator":`...)
		b = appendJSONString(b, aggrStr)
	}
	if hasAggr {
		b = append(b, `,"aggregator":"`...)
		b = strconv.AppendUint(b, uint64(aggr.AS), 10)
		b = append(b, ':')
		b = aggr.Address.AppendTo(b)
		b = append(b, '"')
	}
	if a.originator != nil {
		b = append(b, `,"originator_id":"`...)
		b = netip.AddrFrom4([4]byte(a.originator)).AppendTo(b)
		b = append(b, '"')
	}
	if len(a.clusterList) > 0 {
		b = append(b, `,"cluster_list":[`...)
		for i, c := 0, a.clusterList; len(c) >= 4; i, c = i+1, c[4:] {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = netip.AddrFrom4([4]byte(c[:4])).AppendTo(b)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	return b, true
}

func aggregatorOf(v []byte) bgpattr.Aggregator {
	if len(v) == 6 {
		return bgpattr.Aggregator{AS: uint32(binary.BigEndian.Uint16(v)), Address: netip.AddrFrom4([4]byte(v[2:6]))}
	}
	return bgpattr.Aggregator{AS: binary.BigEndian.Uint32(v), Address: netip.AddrFrom4([4]byte(v[4:8]))}
}

// segments reads the (validated) AS_PATH into st.asns and st.segs, and
// returns it as bgpattr segments for the reconciliation case.
func (st *fastState) segments() []bgpattr.Segment {
	v := st.attrs.asPath
	w := 4
	if st.as2 {
		w = 2
	}
	st.asns, st.segs = st.asns[:0], st.segs[:0]
	for len(v) > 0 {
		typ, n := v[0], int(v[1])
		v = v[2:]
		for range n {
			if w == 2 {
				st.asns = append(st.asns, uint32(binary.BigEndian.Uint16(v)))
			} else {
				st.asns = append(st.asns, binary.BigEndian.Uint32(v))
			}
			v = v[w:]
		}
		st.segs = append(st.segs, int(typ), len(st.asns))
	}
	if !st.attrs.libAny {
		return nil
	}
	out := make([]bgpattr.Segment, 0, len(st.segs)/2)
	start := 0
	for i := 0; i < len(st.segs); i += 2 {
		end := st.segs[i+1]
		out = append(out, bgpattr.Segment{Type: uint8(st.segs[i]), ASNs: append([]uint32(nil), st.asns[start:end]...)})
		start = end
	}
	return out
}

// appendASPath renders st.asns and st.segs as as.apply does without AS4
// attributes.
func (st *fastState) appendASPath(b []byte) []byte {
	if len(st.segs) == 0 {
		return b
	}
	b = append(b, `,"as_path":`...)
	b = appendJSONUints(b, st.asns)
	plain := len(st.segs) == 2 && st.segs[0] == int(bgp.BGP_ASPATH_ATTR_TYPE_SEQ)
	if plain {
		return b
	}
	b = append(b, `,"as_path_segments":[`...)
	start := 0
	for i := 0; i < len(st.segs); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		end := st.segs[i+1]
		b = append(b, `{"type":`...)
		b = appendJSONString(b, bgpattr.SegmentName(uint8(st.segs[i])))
		b = append(b, `,"asns":`...)
		b = appendJSONUints(b, st.asns[start:end])
		b = append(b, '}')
		start = end
	}
	return append(b, ']')
}

// appendRD is formatRD, appended.
func appendRD(b []byte, rd [8]byte) []byte {
	v := rd[2:]
	switch binary.BigEndian.Uint16(rd[:2]) {
	case 0:
		b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint16(v)), 10)
		b = append(b, ':')
		return strconv.AppendUint(b, uint64(binary.BigEndian.Uint32(v[2:])), 10)
	case 1:
		b = netip.AddrFrom4([4]byte(v[:4])).AppendTo(b)
		b = append(b, ':')
		return strconv.AppendUint(b, uint64(binary.BigEndian.Uint16(v[4:])), 10)
	case 2:
		b = strconv.AppendUint(b, uint64(binary.BigEndian.Uint32(v)), 10)
		b = append(b, ':')
		return strconv.AppendUint(b, uint64(binary.BigEndian.Uint16(v[4:])), 10)
	}
	return hex.AppendEncode(b, rd[:])
}

// appendPeerJSON renders peerOf(ph) as encoding/json does.
func appendPeerJSON(b []byte, ph *PeerHeader) []byte {
	b = append(b, `{"address":"`...)
	b = ph.Address.AppendTo(b)
	b = append(b, `","as":`...)
	b = strconv.AppendUint(b, uint64(ph.AS), 10)
	if ph.BGPID.IsValid() {
		b = append(b, `,"bgp_id":"`...)
		b = ph.BGPID.AppendTo(b)
		b = append(b, '"')
	}
	if ph.Distinguisher != ([8]byte{}) {
		b = append(b, `,"rd":"`...)
		b = appendRD(b, ph.Distinguisher)
		b = append(b, '"')
	}
	b = append(b, `,"type":`...)
	b = appendJSONString(b, peerTypeName(ph.Type))
	if ph.Flags != 0 {
		b = append(b, `,"flags":`...)
		b = strconv.AppendUint(b, uint64(ph.Flags), 10)
	}
	if ph.IPv6() {
		b = append(b, `,"ipv6":true`...)
	}
	if ph.TwoByteAS() {
		b = append(b, `,"as2":true`...)
	}
	if ph.Type == PeerTypeLocRIB && ph.Flags&FlagF != 0 {
		b = append(b, `,"filtered":true`...)
	}
	return append(b, '}')
}

// appendOtherAttrsJSON renders Route.Attributes.
func appendOtherAttrsJSON(b []byte, attrs []record.OtherAttribute) []byte {
	b = append(b, `,"attributes":[`...)
	for i, a := range attrs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"type":`...)
		b = strconv.AppendUint(b, uint64(a.Type), 10)
		b = append(b, `,"flags":`...)
		b = strconv.AppendUint(b, uint64(a.Flags), 10)
		b = append(b, `,"value":`...)
		b = appendJSONBytes(b, a.Value)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendTimestamp renders a timestamp field, or nothing for a zero time.
func appendTimestamp(b []byte, c *timeCache, key string, t time.Time) ([]byte, bool) {
	if t.IsZero() {
		return b, true
	}
	b = append(b, key...)
	return c.appendJSON(b, t)
}
