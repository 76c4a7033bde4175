package bmp

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"github.com/bgpedge/bgpedge/internal/bgpattr"
	"github.com/bgpedge/bgpedge/record"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// BGP message types and header size (RFC 4271).
const (
	bgpHeaderLen    = 19
	bgpMsgOpen      = 1
	bgpMsgUpdate    = 2
	bgpMsgNotify    = 3
	attrFlagExtLen  = 0x10
	attrOrigin      = 1
	attrASPath      = 2
	attrNextHop     = 3
	attrMED         = 4
	attrLocalPref   = 5
	attrAtomicAggr  = 6
	attrAggregator  = 7
	attrCommunities = 8
	attrOriginator  = 9
	attrClusterList = 10
	attrMPReach     = 14
	attrMPUnreach   = 15
	attrExtComm     = 16
	attrAS4Path     = 17
	attrAS4Aggr     = 18
	attrLargeComm   = 32
	attrPrefixSID   = 40
)

// Structural failures of BGP payloads; attribute-level failures keep the message.
var (
	errBGPHeader = errors.New("bad bgp header")
	errUpdate    = errors.New("malformed update")
)

// bgpBody checks a BGP message header and returns the type and body.
func bgpBody(msg []byte) (typ uint8, body []byte, n int, err error) {
	if len(msg) < bgpHeaderLen {
		return 0, nil, 0, fmt.Errorf("%w: %d bytes", errBGPHeader, len(msg))
	}
	for _, b := range msg[:16] {
		if b != 0xff {
			return 0, nil, 0, fmt.Errorf("%w: marker", errBGPHeader)
		}
	}
	l := int(binary.BigEndian.Uint16(msg[16:18]))
	if l < bgpHeaderLen || l > len(msg) {
		return 0, nil, 0, fmt.Errorf("%w: length %d of %d bytes", errBGPHeader, l, len(msg))
	}
	return msg[18], msg[bgpHeaderLen:l], l, nil
}

// rawAttr is one path attribute as received.
type rawAttr struct {
	flags, typ uint8
	value      []byte
	whole      []byte // flags, type, length and value
}

// updateParts is the structure of an UPDATE, split without interpretation.
type updateParts struct {
	withdrawn []byte
	attrs     []rawAttr
	nlri      []byte
}

func splitUpdate(body []byte) (updateParts, error) {
	var u updateParts
	if len(body) < 2 {
		return u, fmt.Errorf("%w: no withdrawn length", errUpdate)
	}
	wl := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) < wl+2 {
		return u, fmt.Errorf("%w: withdrawn length %d exceeds message", errUpdate, wl)
	}
	u.withdrawn, body = body[:wl], body[wl:]
	al := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) < al {
		return u, fmt.Errorf("%w: attribute length %d exceeds message", errUpdate, al)
	}
	attrs := body[:al]
	u.nlri = body[al:]
	for len(attrs) > 0 {
		if len(attrs) < 3 {
			return u, fmt.Errorf("%w: truncated attribute header", errUpdate)
		}
		flags, typ := attrs[0], attrs[1]
		hl, vl := 3, int(attrs[2])
		if flags&attrFlagExtLen != 0 {
			if len(attrs) < 4 {
				return u, fmt.Errorf("%w: truncated attribute header", errUpdate)
			}
			hl, vl = 4, int(binary.BigEndian.Uint16(attrs[2:4]))
		}
		if len(attrs) < hl+vl {
			return u, fmt.Errorf("%w: attribute %d length %d exceeds attributes", errUpdate, typ, vl)
		}
		u.attrs = append(u.attrs, rawAttr{flags: flags, typ: typ, value: attrs[hl : hl+vl], whole: attrs[:hl+vl]})
		attrs = attrs[hl+vl:]
	}
	return u, nil
}

// pathOptions are the per-message parsing choices that BGP itself leaves to
// session negotiation.
type pathOptions struct {
	addPath map[bgp.Family]bool
	as2     bool // AS_PATH uses 2-byte ASNs
}

func (o pathOptions) gobgp() *bgp.MarshallingOption {
	m := &bgp.MarshallingOption{Use2ByteAS: o.as2}
	if len(o.addPath) > 0 {
		m.AddPath = make(map[bgp.Family]bgp.BGPAddPathMode, len(o.addPath))
		for f, on := range o.addPath {
			if on {
				m.AddPath[f] = bgp.BGP_ADD_PATH_RECEIVE
			}
		}
	}
	return m
}

// decodedUpdate is an UPDATE turned into per-prefix routes.
type decodedUpdate struct {
	routes []record.Route
	// attrErrs are attributes that did not decode: they are kept raw in
	// the routes' Attributes and reported in one decode-error event.
	attrErrs []error
	// zeroLen counts /0 prefixes: used to choose between Add-Path
	// interpretations when the peer's capabilities are unknown.
	zeroLen int
	// otherWidth counts AS_PATH attributes read with the other ASN width
	// than asked for, because only that one fits.
	otherWidth int
}

// rawFamily reports whether a family is carried with its raw NLRI instead
// of being split into prefixes.
func rawFamily(f bgp.Family) bool {
	switch f {
	case bgp.RF_IPv4_UC, bgp.RF_IPv6_UC, bgp.RF_IPv4_MC, bgp.RF_IPv6_MC,
		bgp.RF_IPv4_MPLS, bgp.RF_IPv6_MPLS, bgp.RF_IPv4_VPN, bgp.RF_IPv6_VPN,
		bgp.RF_IPv4_VPN_MC, bgp.RF_IPv6_VPN_MC, bgp.RF_EVPN:
		return false
	}
	return true
}

// decodeUpdate decodes an UPDATE body with the given options. A structural
// error (lengths, NLRI) fails the whole message; an attribute that does not
// decode is kept raw and reported.
func decodeUpdate(body []byte, opt pathOptions) (decodedUpdate, error) {
	var d decodedUpdate
	u, err := splitUpdate(body)
	if err != nil {
		return d, err
	}
	mo := opt.gobgp()
	var (
		base      record.Route
		reach     []rawAttr
		unreach   []rawAttr
		prefixSID *rawAttr
		as        asAttrs
	)
	as.twoByte = opt.as2
	for i := range u.attrs {
		a := &u.attrs[i]
		switch a.typ {
		case attrMPReach:
			reach = append(reach, *a)
			continue
		case attrMPUnreach:
			unreach = append(unreach, *a)
			continue
		case attrPrefixSID:
			prefixSID = a
		}
		if err := applyAttr(&base, a, mo, &as); err != nil {
			d.attrErrs = append(d.attrErrs, fmt.Errorf("attribute %d: %w", a.typ, err))
			base.Attributes = append(base.Attributes, record.OtherAttribute{Type: a.typ, Flags: a.flags, Value: a.value})
		}
	}
	if as.otherWidth {
		d.otherWidth++
	}
	as.apply(&base)

	emit := func(r record.Route) {
		if r.Prefix != "" && len(r.NLRI) == 0 && r.Family != "" {
			if p, err := netip.ParsePrefix(r.Prefix); err == nil && p.Bits() == 0 {
				d.zeroLen++
			}
		}
		d.routes = append(d.routes, r)
	}
	announce := func(f bgp.Family) record.Route {
		r := base
		r.Action = "announce"
		r.AFI, r.SAFI, r.Family = f.Afi(), f.Safi(), record.FamilyName(f.Afi(), f.Safi())
		return r
	}
	withdraw := func(f bgp.Family) record.Route {
		return record.Route{Action: "withdraw", AFI: f.Afi(), SAFI: f.Safi(), Family: record.FamilyName(f.Afi(), f.Safi())}
	}

	// Classic IPv4 unicast withdrawals and announcements.
	v4AddPath := opt.addPath[bgp.RF_IPv4_UC]
	ws, err := ipv4Prefixes(u.withdrawn, v4AddPath)
	if err != nil {
		return d, fmt.Errorf("%w: withdrawn routes: %w", errUpdate, err)
	}
	for _, p := range ws {
		r := withdraw(bgp.RF_IPv4_UC)
		r.Prefix, r.PathID = p.prefix.String(), p.id
		emit(r)
	}
	ns, err := ipv4Prefixes(u.nlri, v4AddPath)
	if err != nil {
		return d, fmt.Errorf("%w: nlri: %w", errUpdate, err)
	}
	for _, p := range ns {
		r := announce(bgp.RF_IPv4_UC)
		r.Prefix, r.PathID = p.prefix.String(), p.id
		emit(r)
	}

	for _, a := range reach {
		if err := decodeMP(a, prefixSID, mo, true, announce, emit); err != nil {
			return d, err
		}
	}
	for _, a := range unreach {
		if err := decodeMP(a, prefixSID, mo, false, withdraw, emit); err != nil {
			return d, err
		}
	}
	// End-of-RIB (RFC 4724): an empty UPDATE for IPv4 unicast, or one
	// holding only an empty MP_UNREACH_NLRI for other families.
	if len(u.withdrawn) == 0 && len(u.nlri) == 0 && len(reach) == 0 {
		if len(u.attrs) == 0 {
			emit(record.Route{Action: "withdraw", AFI: 1, SAFI: 1, Family: record.FamilyName(1, 1), EndOfRIB: true})
		} else if len(u.attrs) == 1 && len(unreach) == 1 && len(unreach[0].value) == 3 {
			afi, safi := binary.BigEndian.Uint16(unreach[0].value), unreach[0].value[2]
			emit(record.Route{Action: "withdraw", AFI: afi, SAFI: safi, Family: record.FamilyName(afi, safi), EndOfRIB: true})
		}
	}
	return d, nil
}

type pathPrefix struct {
	prefix netip.Prefix
	id     uint32
}

// ipv4Prefixes parses the classic NLRI encoding of IPv4 unicast.
func ipv4Prefixes(b []byte, addPath bool) ([]pathPrefix, error) {
	var out []pathPrefix
	for len(b) > 0 {
		var id uint32
		if addPath {
			if len(b) < 4 {
				return nil, errors.New("truncated path id")
			}
			id, b = binary.BigEndian.Uint32(b), b[4:]
			if len(b) == 0 {
				return nil, errors.New("path id without prefix")
			}
		}
		bits := int(b[0])
		n := (bits + 7) / 8
		if bits > 32 || len(b) < 1+n {
			return nil, fmt.Errorf("bad prefix length %d", bits)
		}
		var a [4]byte
		copy(a[:], b[1:1+n])
		out = append(out, pathPrefix{prefix: netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked(), id: id})
		b = b[1+n:]
	}
	return out, nil
}

// decodeMP turns an MP_REACH_NLRI or MP_UNREACH_NLRI attribute into routes.
func decodeMP(a rawAttr, prefixSID *rawAttr, mo *bgp.MarshallingOption, reach bool, newRoute func(bgp.Family) record.Route, emit func(record.Route)) error {
	if len(a.value) < 3 {
		return fmt.Errorf("%w: mp attribute of %d bytes", errUpdate, len(a.value))
	}
	afi, safi := binary.BigEndian.Uint16(a.value), a.value[2]
	fam := bgp.NewFamily(afi, safi)
	if rawFamily(fam) {
		r := newRoute(fam)
		rest := a.value[3:]
		if reach {
			if len(rest) < 1 || len(rest) < 2+int(rest[0]) {
				return fmt.Errorf("%w: mp_reach next hop of family %d/%d", errUpdate, afi, safi)
			}
			r.NextHop = rawNextHop(rest[1 : 1+int(rest[0])])
			rest = rest[2+int(rest[0]):] // next hop and the reserved byte
		}
		if len(rest) == 0 {
			return nil // End-of-RIB, reported by the caller
		}
		r.NLRI = rest
		emit(r)
		return nil
	}
	var nlris []bgp.PathNLRI
	var nextHop string
	decode := func(p bgp.PathAttributeInterface) error {
		data := a.whole
		if prefixSID != nil {
			// Label stacks are read differently when a Prefix-SID is
			// present; GoBGP only knows that from a whole UPDATE.
			u := &bgp.BGPUpdate{}
			msg := make([]byte, 0, 4+len(a.whole)+len(prefixSID.whole))
			msg = append(msg, 0, 0, 0, 0)
			msg = append(msg, prefixSID.whole...)
			msg = append(msg, a.whole...)
			binary.BigEndian.PutUint16(msg[2:], uint16(len(msg)-4))
			if err := u.DecodeFromBytes(msg, mo); err != nil {
				return err
			}
			for _, pa := range u.PathAttributes {
				if pa.GetType() == bgp.BGPAttrType(a.typ) {
					switch v := pa.(type) {
					case *bgp.PathAttributeMpReachNLRI:
						*p.(*bgp.PathAttributeMpReachNLRI) = *v
					case *bgp.PathAttributeMpUnreachNLRI:
						*p.(*bgp.PathAttributeMpUnreachNLRI) = *v
					}
				}
			}
			return nil
		}
		return p.DecodeFromBytes(data, mo)
	}
	if reach {
		p := &bgp.PathAttributeMpReachNLRI{}
		if err := decode(p); err != nil {
			return fmt.Errorf("%w: mp_reach %s: %w", errUpdate, record.FamilyName(afi, safi), err)
		}
		nlris = p.Value
		if p.Nexthop.IsValid() {
			nextHop = p.Nexthop.String()
		}
	} else {
		p := &bgp.PathAttributeMpUnreachNLRI{}
		if err := decode(p); err != nil {
			return fmt.Errorf("%w: mp_unreach %s: %w", errUpdate, record.FamilyName(afi, safi), err)
		}
		nlris = p.Value
	}
	for _, pn := range nlris {
		r := newRoute(fam)
		if reach {
			r.NextHop = nextHop
		}
		r.PathID = pn.ID
		switch n := pn.NLRI.(type) {
		case *bgp.IPAddrPrefix:
			r.Prefix = n.Prefix.String()
		case *bgp.LabeledIPAddrPrefix:
			r.Prefix, r.Labels = n.Prefix.String(), routeLabels(n.Labels.Labels, reach)
		case *bgp.LabeledVPNIPAddrPrefix:
			r.Prefix, r.Labels = n.Prefix.String(), routeLabels(n.Labels.Labels, reach)
			r.RD = rdString(n.RD)
		case *bgp.EVPNNLRI:
			r.Prefix = n.String()
			r.RD = rdString(n.RD())
			if b, err := n.Serialize(); err == nil {
				r.NLRI = b
			}
		default:
			r.Prefix = n.String()
			if b, err := n.Serialize(); err == nil {
				r.NLRI = b
			}
		}
		emit(r)
	}
	return nil
}

// withdrawLabel is the label field RFC 3107 (3) gives withdrawals; GoBGP
// hands it over as it is, not shifted like a label.
const withdrawLabel = 0x800000

// routeLabels is the label stack an event publishes: none for a withdrawal,
// whose label field is only a compatibility value to be ignored (RFC 8277
// 2.4), nor for the withdrawal value wherever it appears.
func routeLabels(l []uint32, reach bool) []uint32 {
	if !reach || len(l) == 1 && l[0] == withdrawLabel {
		return nil
	}
	return l
}

// rawNextHop formats an MP_REACH next hop of a family carried raw: an
// address, optionally after an 8-byte RD, or a global plus link-local pair.
func rawNextHop(b []byte) string {
	switch len(b) {
	case 4, 16:
		a, _ := netip.AddrFromSlice(b)
		return a.String()
	case 12, 24:
		a, _ := netip.AddrFromSlice(b[8:])
		return a.String()
	case 32:
		a, _ := netip.AddrFromSlice(b[:16])
		return a.String()
	}
	return ""
}

// asAttrs collects what the AS-related attributes of one UPDATE say; the
// route's AS path and aggregator are set from it once all are read.
type asAttrs struct {
	twoByte    bool // AS_PATH read with 2-byte ASNs
	otherWidth bool // ... against the width asked for
	path       []bgpattr.Segment
	hasPath    bool
	as4Path    []bgpattr.Segment
	hasAS4Path bool
	aggr       *bgpattr.Aggregator
	aggr2      bool // AGGREGATOR has a 2-byte AS
	as4Aggr    *bgpattr.Aggregator
}

// apply sets the route's AS path and aggregator. On a 2-byte session the
// 4-byte ASNs travel in AS4_PATH and AS4_AGGREGATOR, with AS_TRANS in
// AS_PATH and AGGREGATOR; they are reconciled as a NEW speaker does
// (RFC 6793 4.2.3, bgpattr). A 4-byte session has nothing to merge: AS4
// attributes there are only carried raw. Both AS4 attributes are also kept
// raw in Attributes, as received.
func (a *asAttrs) apply(r *record.Route) {
	in := bgpattr.AS4{Path: a.path, Aggregator: a.aggr}
	if a.twoByte && a.hasAS4Path {
		in.AS4Path = a.as4Path
	}
	if a.aggr2 {
		in.AS4Aggregator = a.as4Aggr
	}
	path, aggr := in.Reconcile()
	if aggr != nil {
		r.Aggregator = aggr.String()
	}
	if !a.hasPath {
		return
	}
	var segs []record.ASPathSegment
	plain := true
	for _, s := range path {
		r.ASPath = append(r.ASPath, s.ASNs...)
		segs = append(segs, record.ASPathSegment{Type: bgpattr.SegmentName(s.Type), ASNs: s.ASNs})
		if s.Type != bgp.BGP_ASPATH_ATTR_TYPE_SEQ {
			plain = false
		}
	}
	if !plain || len(segs) > 1 {
		r.ASPathSegments = segs
	}
}

// applyAttr decodes one non-MP attribute into the route template; the
// AS-related ones go to as.
func applyAttr(r *record.Route, a *rawAttr, mo *bgp.MarshallingOption, as *asAttrs) error {
	p, err := bgp.GetPathAttribute(a.whole)
	if err != nil {
		return err
	}
	if err := p.DecodeFromBytes(a.whole, mo); err != nil {
		if a.typ != attrASPath {
			return err
		}
		// The width the session (or, without a Peer Up, the A flag) implies
		// is not always the one used: FRR 8.0 sends 2-byte AS_PATHs on
		// sessions whose both OPENs have the 4-octet AS capability, and
		// some routers reformat AS_PATH without touching the A flag. When
		// only the other reading fits the attribute's length, it is used.
		alt := *mo
		alt.Use2ByteAS = !mo.Use2ByteAS
		p, _ = bgp.GetPathAttribute(a.whole)
		if err2 := p.DecodeFromBytes(a.whole, &alt); err2 != nil {
			return err
		}
		as.twoByte, as.otherWidth = alt.Use2ByteAS, true
	}
	switch v := p.(type) {
	case *bgp.PathAttributeOrigin:
		r.Origin = originName(v.Value)
	case *bgp.PathAttributeAsPath:
		as.path, as.hasPath = bgpattr.Segments(v.Value), true
	case *bgp.PathAttributeAs4Path:
		as.as4Path, as.hasAS4Path = bgpattr.AS4Segments(v.Value), true
		r.Attributes = append(r.Attributes, record.OtherAttribute{Type: a.typ, Flags: a.flags, Value: a.value})
	case *bgp.PathAttributeAs4Aggregator:
		as.as4Aggr = &bgpattr.Aggregator{AS: v.Value.AS, Address: v.Value.Address}
		r.Attributes = append(r.Attributes, record.OtherAttribute{Type: a.typ, Flags: a.flags, Value: a.value})
	case *bgp.PathAttributeNextHop:
		r.NextHop = v.Value.String()
	case *bgp.PathAttributeMultiExitDisc:
		m := v.Value
		r.MED = &m
	case *bgp.PathAttributeLocalPref:
		l := v.Value
		r.LocalPref = &l
	case *bgp.PathAttributeAtomicAggregate:
		r.AtomicAggregate = true
	case *bgp.PathAttributeAggregator:
		// Its width shows in its length (6 or 8 bytes), whatever the session.
		as.aggr2 = len(a.value) == 6
		as.aggr = &bgpattr.Aggregator{AS: v.Value.AS, Address: v.Value.Address}
	case *bgp.PathAttributeCommunities:
		for _, c := range v.Value {
			r.Communities = append(r.Communities, bgpattr.Community(c))
		}
	case *bgp.PathAttributeOriginatorId:
		r.OriginatorID = v.Value.String()
	case *bgp.PathAttributeClusterList:
		for _, c := range v.Value {
			r.ClusterList = append(r.ClusterList, c.String())
		}
	case *bgp.PathAttributeExtendedCommunities:
		for _, c := range v.Value {
			r.ExtCommunities = append(r.ExtCommunities, extCommunityString(c))
		}
	case *bgp.PathAttributeLargeCommunities:
		for _, c := range v.Values {
			r.LargeCommunities = append(r.LargeCommunities, bgpattr.LargeCommunity(c))
		}
	default:
		r.Attributes = append(r.Attributes, record.OtherAttribute{Type: a.typ, Flags: a.flags, Value: a.value})
	}
	return nil
}

func extCommunityString(c bgp.ExtendedCommunityInterface) string {
	if u, ok := c.(*bgp.UnknownExtended); ok && len(u.Value) == 7 {
		// GoBGP's text drops the type byte, so transitive and
		// non-transitive could not be told apart: all 8 bytes, in hex.
		b := make([]byte, 0, len("raw:")+16)
		b = append(b, "raw:"...)
		b = hex.AppendEncode(b, []byte{byte(u.Type)})
		return string(hex.AppendEncode(b, u.Value))
	}
	_, sub := c.GetTypes()
	s := c.String()
	switch sub {
	case bgp.EC_SUBTYPE_ROUTE_TARGET:
		return "target:" + s
	case bgp.EC_SUBTYPE_ROUTE_ORIGIN:
		return "origin:" + s
	}
	return s
}

// OpenMessage is a decoded BGP OPEN, as carried in a Peer Up.
type OpenMessage struct {
	Version  uint8  `json:"version"`
	AS       uint32 `json:"as"` // the 4-octet AS capability's value when present, else My AS
	MyAS     uint16 `json:"my_as"`
	HoldTime uint16 `json:"hold_time"`
	BGPID    string `json:"bgp_id"`
	// Capabilities in the order received.
	Capabilities []Capability `json:"capabilities,omitempty"`
	// OtherParams are optional parameters other than capabilities.
	OtherParams []RawTLV `json:"other_params,omitempty"`
}

// Capability is one BGP capability of an OPEN.
type Capability struct {
	Code uint8  `json:"code"`
	Name string `json:"name"`
	// Family is set for multiprotocol (code 1).
	Family *FamilyRef `json:"family,omitempty"`
	// AS is set for 4-octet AS (code 65).
	AS *uint32 `json:"as,omitempty"`
	// AddPath is set for Add-Path (code 69).
	AddPath []AddPathFamily `json:"add_path,omitempty"`
	// Value is the raw capability value for the others.
	Value []byte `json:"value,omitempty"`
}

// FamilyRef names an AFI/SAFI.
type FamilyRef struct {
	AFI    uint16 `json:"afi"`
	SAFI   uint8  `json:"safi"`
	Family string `json:"family"`
}

// AddPathFamily is one Add-Path tuple: mode is receive, send or both.
type AddPathFamily struct {
	FamilyRef
	Mode string `json:"mode"`
}

// RawTLV is a type-length-value kept as received.
type RawTLV struct {
	Type  uint16 `json:"type"`
	Value []byte `json:"value"`
}

// openCaps is what decoding needs from an OPEN.
type openCaps struct {
	read    bool // the OPEN decoded: a missing capability means "not supported"
	as4     bool
	addPath map[bgp.Family]bgp.BGPAddPathMode
}

var errOpen = errors.New("malformed open")

// decodeOpen decodes a whole BGP OPEN message (header included).
func decodeOpen(msg []byte) (*OpenMessage, openCaps, error) {
	var caps openCaps
	typ, body, _, err := bgpBody(msg)
	if err != nil {
		return nil, caps, err
	}
	if typ != bgpMsgOpen {
		return nil, caps, fmt.Errorf("%w: message type %d", errOpen, typ)
	}
	var o bgp.BGPOpen
	if err := o.DecodeFromBytes(body); err != nil {
		// GoBGP rejects OPENs that real routers send (FRR's Add-Path
		// capability of length 0): read those leniently.
		if out, caps, lerr := decodeOpenLenient(body); lerr == nil {
			return out, caps, nil
		}
		return nil, caps, fmt.Errorf("%w: %w", errOpen, err)
	}
	caps.read = true
	out := &OpenMessage{Version: o.Version, MyAS: o.MyAS, AS: uint32(o.MyAS), HoldTime: o.HoldTime}
	if o.ID.IsValid() {
		out.BGPID = o.ID.String()
	}
	for _, p := range o.OptParams {
		switch pp := p.(type) {
		case *bgp.OptionParameterCapability:
			for _, c := range pp.Capability {
				cap := Capability{Code: uint8(c.Code()), Name: capabilityName(uint8(c.Code()))}
				switch v := c.(type) {
				case *bgp.CapMultiProtocol:
					cap.Family = familyRef(v.CapValue)
				case *bgp.CapFourOctetASNumber:
					as := v.CapValue
					cap.AS, out.AS, caps.as4 = &as, as, true
				case *bgp.CapAddPath:
					if caps.addPath == nil {
						caps.addPath = map[bgp.Family]bgp.BGPAddPathMode{}
					}
					for _, t := range v.Tuples {
						caps.addPath[t.Family] = t.Mode
						cap.AddPath = append(cap.AddPath, AddPathFamily{FamilyRef: *familyRef(t.Family), Mode: addPathModeName(t.Mode)})
					}
				default:
					if b, err := c.Serialize(); err == nil && len(b) > 2 {
						cap.Value = b[2:]
					}
				}
				out.Capabilities = append(out.Capabilities, cap)
			}
		case *bgp.OptionParameterUnknown:
			out.OtherParams = append(out.OtherParams, RawTLV{Type: uint16(pp.ParamType), Value: pp.Value})
		}
	}
	return out, caps, nil
}

func familyRef(f bgp.Family) *FamilyRef {
	return &FamilyRef{AFI: f.Afi(), SAFI: f.Safi(), Family: record.FamilyName(f.Afi(), f.Safi())}
}

func addPathModeName(m bgp.BGPAddPathMode) string {
	switch m {
	case bgp.BGP_ADD_PATH_RECEIVE:
		return "receive"
	case bgp.BGP_ADD_PATH_SEND:
		return "send"
	case bgp.BGP_ADD_PATH_BOTH:
		return "both"
	}
	return "none"
}

// Notification is a decoded BGP NOTIFICATION.
type Notification struct {
	Code       uint8  `json:"code"`
	Subcode    uint8  `json:"subcode"`
	Name       string `json:"name"`
	SubcodeStr string `json:"subcode_name,omitempty"`
	Data       []byte `json:"data,omitempty"`
}

var errNotification = errors.New("malformed notification")

func decodeNotification(msg []byte) (*Notification, error) {
	typ, body, _, err := bgpBody(msg)
	if err != nil {
		return nil, err
	}
	if typ != bgpMsgNotify {
		return nil, fmt.Errorf("%w: message type %d", errNotification, typ)
	}
	var n bgp.BGPNotification
	if err := n.DecodeFromBytes(body); err != nil {
		return nil, fmt.Errorf("%w: %w", errNotification, err)
	}
	return &Notification{Code: n.ErrorCode, Subcode: n.ErrorSubcode, Name: notificationName(n.ErrorCode), SubcodeStr: notificationSubcodeName(n.ErrorCode, n.ErrorSubcode), Data: n.Data}, nil
}

// decodeOpenLenient reads an OPEN body that GoBGP refused: every capability
// that is well formed is decoded, the others are kept raw.
func decodeOpenLenient(body []byte) (*OpenMessage, openCaps, error) {
	var caps openCaps
	if len(body) < 10 {
		return nil, caps, fmt.Errorf("%w: %d bytes", errOpen, len(body))
	}
	out := &OpenMessage{Version: body[0], MyAS: binary.BigEndian.Uint16(body[1:3]), HoldTime: binary.BigEndian.Uint16(body[3:5])}
	out.AS = uint32(out.MyAS)
	out.BGPID = netip.AddrFrom4([4]byte(body[5:9])).String()
	plen, params := int(body[9]), body[10:]
	ext := false
	if plen == 255 && len(params) >= 3 && params[0] == 255 { // RFC 9072 extended optional parameters
		ext, plen, params = true, int(binary.BigEndian.Uint16(params[1:3])), params[3:]
	}
	if len(params) < plen {
		return nil, caps, fmt.Errorf("%w: optional parameters length %d exceeds %d bytes", errOpen, plen, len(params))
	}
	params = params[:plen]
	caps.read = true
	for len(params) > 0 {
		hl := 2
		if ext {
			hl = 3
		}
		if len(params) < hl {
			return nil, caps, fmt.Errorf("%w: truncated optional parameter", errOpen)
		}
		typ, l := params[0], int(params[1])
		if ext {
			l = int(binary.BigEndian.Uint16(params[1:3]))
		}
		if len(params) < hl+l {
			return nil, caps, fmt.Errorf("%w: optional parameter length %d exceeds %d bytes", errOpen, l, len(params)-hl)
		}
		v := params[hl : hl+l]
		params = params[hl+l:]
		if typ != 2 {
			out.OtherParams = append(out.OtherParams, RawTLV{Type: uint16(typ), Value: v})
			continue
		}
		for len(v) >= 2 {
			code, cl := v[0], int(v[1])
			if len(v) < 2+cl {
				return nil, caps, fmt.Errorf("%w: capability %d length %d exceeds %d bytes", errOpen, code, cl, len(v)-2)
			}
			cv := v[2 : 2+cl]
			v = v[2+cl:]
			c := Capability{Code: code, Name: capabilityName(code)}
			switch {
			case code == 1 && cl == 4:
				c.Family = familyRef(bgp.NewFamily(binary.BigEndian.Uint16(cv), cv[3]))
			case code == 65 && cl == 4:
				as := binary.BigEndian.Uint32(cv)
				c.AS, out.AS, caps.as4 = &as, as, true
			case code == 69 && cl > 0 && cl%4 == 0:
				if caps.addPath == nil {
					caps.addPath = map[bgp.Family]bgp.BGPAddPathMode{}
				}
				for ; len(cv) >= 4; cv = cv[4:] {
					f, m := bgp.NewFamily(binary.BigEndian.Uint16(cv), cv[2]), bgp.BGPAddPathMode(cv[3])
					caps.addPath[f] = m
					c.AddPath = append(c.AddPath, AddPathFamily{FamilyRef: *familyRef(f), Mode: addPathModeName(m)})
				}
			default:
				c.Value = cv
			}
			out.Capabilities = append(out.Capabilities, c)
		}
	}
	return out, caps, nil
}

// rdString formats a route distinguisher like the per-peer header's (plain
// ASNs, never asdot), whatever GoBGP's own String does.
func rdString(rd bgp.RouteDistinguisherInterface) string {
	if rd == nil {
		return ""
	}
	b, err := rd.Serialize()
	if err != nil || len(b) != 8 {
		return rd.String()
	}
	return formatRD([8]byte(b))
}
