// Package bgpattr owns the BGP path-attribute rules that the BMP decoder and
// exaBGP's packets decoding must apply alike: rebuilding 4-byte AS paths and
// aggregators from a 2-byte session's attributes (RFC 6793), and the text
// forms of AS path segments and communities.
package bgpattr

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// ASTrans stands in for a 4-byte ASN on a 2-byte session (RFC 6793).
const ASTrans = 23456

// Segment is one AS_PATH or AS4_PATH segment.
type Segment struct {
	Type uint8
	ASNs []uint32
}

// Segments converts GoBGP's AS_PATH segments.
func Segments(params []bgp.AsPathParamInterface) []Segment {
	out := make([]Segment, 0, len(params))
	for _, p := range params {
		out = append(out, Segment{Type: p.GetType(), ASNs: p.GetAS()})
	}
	return out
}

// AS4Segments converts GoBGP's AS4_PATH segments.
func AS4Segments(params []*bgp.As4PathParam) []Segment {
	out := make([]Segment, 0, len(params))
	for _, p := range params {
		out = append(out, Segment{Type: p.Type, ASNs: p.AS})
	}
	return out
}

// Len is the segment's length for path selection (RFC 4271 9.1.2.2,
// RFC 5065): a set counts one, confederation segments nothing.
func (s Segment) Len() int {
	switch s.Type {
	case bgp.BGP_ASPATH_ATTR_TYPE_SEQ:
		return len(s.ASNs)
	case bgp.BGP_ASPATH_ATTR_TYPE_SET:
		return 1
	}
	return 0
}

// Confed reports a confederation segment.
func (s Segment) Confed() bool {
	return s.Type == bgp.BGP_ASPATH_ATTR_TYPE_CONFED_SEQ || s.Type == bgp.BGP_ASPATH_ATTR_TYPE_CONFED_SET
}

// SegmentName is the segment type as the JSON events spell it.
func SegmentName(t uint8) string {
	switch t {
	case bgp.BGP_ASPATH_ATTR_TYPE_SET:
		return "set"
	case bgp.BGP_ASPATH_ATTR_TYPE_SEQ:
		return "sequence"
	case bgp.BGP_ASPATH_ATTR_TYPE_CONFED_SEQ:
		return "confed-sequence"
	case bgp.BGP_ASPATH_ATTR_TYPE_CONFED_SET:
		return "confed-set"
	}
	return "unknown-" + strconv.Itoa(int(t))
}

// Aggregator is an AGGREGATOR or AS4_AGGREGATOR value.
type Aggregator struct {
	AS      uint32
	Address netip.Addr
}

// String is the "AS:address" form of the events.
func (a Aggregator) String() string {
	return strconv.FormatUint(uint64(a.AS), 10) + ":" + a.Address.String()
}

// AS4 is what one UPDATE received on a 2-byte AS session says about its path
// and aggregator. AS4Path and AS4Aggregator are set only when the attribute
// came, and only where it applies: AS4_PATH next to a 2-byte AS_PATH,
// AS4_AGGREGATOR next to a 2-byte AGGREGATOR; on a 4-byte session both are
// carried raw and change nothing.
type AS4 struct {
	Path          []Segment
	AS4Path       []Segment // nil: no AS4_PATH
	Aggregator    *Aggregator
	AS4Aggregator *Aggregator
}

// Reconcile rebuilds the path and aggregator as a NEW speaker does (RFC 6793
// 4.2.3). An AGGREGATOR whose AS is not AS_TRANS next to an AS4_AGGREGATOR
// means an OLD speaker aggregated after the AS4 attributes were attached, so
// both AS4 attributes are stale and ignored. Otherwise AS4_AGGREGATOR
// replaces an AS_TRANS AGGREGATOR, and AS4_PATH is merged into AS_PATH.
func (a AS4) Reconcile() ([]Segment, *Aggregator) {
	if a.Aggregator != nil && a.AS4Aggregator != nil && a.Aggregator.AS != ASTrans {
		return a.Path, a.Aggregator
	}
	aggr := a.Aggregator
	if aggr != nil && a.AS4Aggregator != nil {
		aggr = a.AS4Aggregator
	}
	return MergeAS4Path(a.Path, a.AS4Path), aggr
}

// MergeAS4Path rebuilds the AS path from AS_PATH and AS4_PATH (RFC 6793
// 4.2.3): AS4_PATH replaces as many trailing ASNs of AS_PATH as it holds;
// confederation segments in AS4_PATH are dropped (RFC 6793 6), and an
// AS4_PATH longer than AS_PATH is ignored.
func MergeAS4Path(path, as4 []Segment) []Segment {
	// Confederation segments count 0 (Len): a leading one stays as it is.
	asLen := 0
	for _, s := range path {
		asLen += s.Len()
	}
	var tail []Segment
	as4Len := 0
	for _, s := range as4 {
		if s.Confed() {
			continue
		}
		as4Len += s.Len()
		tail = append(tail, s)
	}
	if asLen < as4Len || len(tail) == 0 {
		return path
	}
	keep := asLen - as4Len
	var out []Segment
	for _, s := range path {
		if n := s.Len(); keep-n >= 0 {
			out = append(out, s) // a leading confederation segment stays
			keep -= n
		} else {
			out = append(out, Segment{Type: s.Type, ASNs: s.ASNs[:keep]})
			keep = 0
		}
		if keep <= 0 {
			break
		}
	}
	for _, s := range tail {
		if n := len(out); n > 0 && s.Type == bgp.BGP_ASPATH_ATTR_TYPE_SEQ && out[n-1].Type == bgp.BGP_ASPATH_ATTR_TYPE_SEQ {
			out[n-1].ASNs = slices.Concat(out[n-1].ASNs, s.ASNs)
			continue
		}
		out = append(out, s)
	}
	return slices.DeleteFunc(out, func(s Segment) bool { return len(s.ASNs) == 0 })
}

// Community is a standard community's "high:low" form.
func Community(c uint32) string {
	return strconv.FormatUint(uint64(c>>16), 10) + ":" + strconv.FormatUint(uint64(c&0xffff), 10)
}

// LargeCommunity is a large community's "global:local1:local2" form.
func LargeCommunity(c *bgp.LargeCommunity) string {
	return strconv.FormatUint(uint64(c.ASN), 10) + ":" + strconv.FormatUint(uint64(c.LocalData1), 10) + ":" + strconv.FormatUint(uint64(c.LocalData2), 10)
}
