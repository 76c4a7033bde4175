package exabgp

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/bgpedge/bgpedge/record"
)

// Event types of exaBGP events that are not routes. Route events use "route",
// the same type as BMP route monitoring.
const (
	TypeRoute       = "route"
	TypeShutdown    = "exabgp-shutdown" // exaBGP itself is exiting
	TypeDecodeError = "decode-error"
)

// Normalise turns one decoded exaBGP event into bgpedge events: one per
// prefix for an UPDATE (withdrawals first, as on the wire), an End-of-RIB
// marker, or a single session event (state, open, …) carrying exaBGP's body
// in Data. ID, Agent, Seq and ReceivedAt are left for the encoder.
func Normalise(m *Message) ([]record.Event, error) {
	base := record.Event{V: record.EventSchemaVersion, Source: "exabgp"}
	if ts, ok := m.Timestamp(); ok {
		base.Timestamp = &ts
	}
	if m.Neighbor == nil {
		// exaBGP's own shutdown notification is the only neighbor-less event.
		e := base
		e.Type = m.Type
		if m.Type == "notification" && string(bytes.TrimSpace(m.Notification)) == `"shutdown"` {
			e.Type = TypeShutdown
		}
		e.Data = sessionData{Host: m.Host, PID: m.PID, Notification: rawOrNil(m.Notification), Repaired: m.Repaired}
		return []record.Event{e}, nil
	}
	n := m.Neighbor
	base.Router = n.Address.Local
	base.Peer = &record.Peer{Address: n.Address.Peer, AS: n.ASN.Peer, Type: "exabgp"}
	if a, err := netip.ParseAddr(n.Address.Peer); err == nil && a.Is6() && !a.Is4In6() {
		base.Peer.IPv6 = true
	}
	if m.Type == "update" && n.Message != nil && (n.Message.Update != nil || n.Message.EOR != nil) {
		evs, err := normaliseUpdate(base, n.Message, ribOf(n.Direction))
		if err != nil || len(evs) > 0 {
			return evs, err
		}
		// An UPDATE without NLRI (attributes only): one event keeps it.
	}
	e := base
	e.Type = m.Type
	d := sessionData{
		Direction:    n.Direction,
		LocalAS:      n.ASN.Local,
		RouterID:     n.RouterID,
		State:        n.State,
		Reason:       n.Reason,
		Open:         rawOrNil(n.Open),
		Negotiated:   rawOrNil(n.Negotiated),
		Notification: rawOrNil(n.Notification),
		RouteRefresh: rawOrNil(n.RouteRefresh),
		Operational:  rawOrNil(n.Operational),
		Code:         rawOrNil(n.Code),
		Name:         n.Name,
		Repaired:     m.Repaired,
		Header:       m.Header,
		Body:         m.Body,
	}
	if n.Message != nil && n.Message.Update != nil {
		d.Update, _ = json.Marshal(n.Message.Update)
	}
	if n.Message != nil && n.Message.Body != "" {
		// `packets` mode: the raw message of any type, no parsed content.
		d.Category = n.Message.Category
		d.Header, d.Body = n.Message.Header, n.Message.Body
	}
	if len(n.Open) > 0 {
		var o struct {
			RouterID string `json:"router_id"`
		}
		if json.Unmarshal(n.Open, &o) == nil && o.RouterID != "" && n.Direction != "send" && n.Direction != "out" {
			e.Peer.BGPID = o.RouterID
		}
	}
	e.Data = d
	return []record.Event{e}, nil
}

// sessionData is the Data of non-route exaBGP events; exaBGP's sub-objects
// are passed through as it wrote them.
type sessionData struct {
	Direction    string          `json:"direction,omitempty"`
	LocalAS      uint32          `json:"local_as,omitempty"`
	RouterID     string          `json:"router_id,omitempty"` // exaBGP 5.x: local router-id
	State        string          `json:"state,omitempty"`
	Reason       string          `json:"reason,omitempty"`
	Open         json.RawMessage `json:"open,omitempty"`
	Negotiated   json.RawMessage `json:"negotiated,omitempty"`
	Notification json.RawMessage `json:"notification,omitempty"`
	RouteRefresh json.RawMessage `json:"route_refresh,omitempty"`
	Operational  json.RawMessage `json:"operational,omitempty"`
	Update       json.RawMessage `json:"update,omitempty"`
	Code         json.RawMessage `json:"code,omitempty"`
	Name         string          `json:"name,omitempty"`
	Category     *int            `json:"category,omitempty"`
	Header       string          `json:"header,omitempty"`
	Body         string          `json:"body,omitempty"`
	Host         string          `json:"host,omitempty"`
	PID          int64           `json:"pid,omitempty"`
	// Repaired says exaBGP wrote invalid JSON that bgpedge repaired.
	Repaired bool `json:"repaired,omitempty"`
}

func rawOrNil(r json.RawMessage) json.RawMessage {
	if len(bytes.TrimSpace(r)) == 0 || string(r) == "null" {
		return nil
	}
	return r
}

// ribOf says which RIB an UPDATE belongs to: what exaBGP received from the
// peer (adj-rib-in), or what it sent to it (adj-rib-out, with `send { parsed; }`).
func ribOf(direction string) string {
	if direction == "send" || direction == "out" {
		return "adj-rib-out"
	}
	return "adj-rib-in"
}

func normaliseUpdate(base record.Event, msg *UpdateMessage, rib string) ([]record.Event, error) {
	if msg.EOR != nil {
		e := base
		e.Type = TypeRoute
		afi, safi, fam := family(msg.EOR.AFI + " " + msg.EOR.SAFI)
		// As in BMP events: an End-of-RIB is an (empty) withdrawal.
		e.Route = &record.Route{Action: "withdraw", EndOfRIB: true, AFI: afi, SAFI: safi, Family: fam, RIB: rib}
		return []record.Event{e}, nil
	}
	u := msg.Update
	attrs, err := decodeAttributes(u.Attribute)
	if err != nil {
		return nil, err
	}
	var out []record.Event
	for _, fam := range sortedKeys(u.Withdraw) {
		for _, raw := range u.Withdraw[fam] {
			r, err := routeFromNLRI(raw, fam, rib)
			if err != nil {
				return nil, err
			}
			r.Action = "withdraw"
			e := base
			e.Type = TypeRoute
			e.Route = r
			out = append(out, e)
		}
	}
	for _, fam := range sortedKeys(u.Announce) {
		byNH := u.Announce[fam]
		for _, nh := range sortedKeys(byNH) {
			for _, raw := range byNH[nh] {
				r, err := routeFromNLRI(raw, fam, rib)
				if err != nil {
					return nil, err
				}
				attrs.applyTo(r)
				r.Action = "announce"
				if nh != "no-nexthop" && nh != "null" && r.NextHop == "" {
					r.NextHop = nh
				}
				e := base
				e.Type = TypeRoute
				e.Route = r
				out = append(out, e)
			}
		}
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

var afiNums = map[string]uint16{"ipv4": 1, "ipv6": 2, "l2vpn": 25, "bgp-ls": 16388}

var safiNums = map[string]uint8{
	"unicast": 1, "multicast": 2, "nlri-mpls": 4, "labeled-unicast": 4, "mcast-vpn": 5,
	"vpls": 65, "evpn": 70, "bgp-ls": 71, "bgp-ls-vpn": 72, "sr-policy": 73, "mup": 85,
	"mpls-vpn": 128, "rtc": 132, "flow": 133, "flow-vpn": 134,
}

// family maps exaBGP's "afi safi" (e.g. "ipv4 unicast") to numbers and to
// the family name BMP events use for the same numbers, so consumers can join
// both sources.
func family(s string) (uint16, uint8, string) {
	s = strings.TrimSpace(s)
	a, sf, _ := strings.Cut(s, " ")
	afi, okA := afiNums[a]
	safi, okS := safiNums[sf]
	if !okA || !okS {
		return afi, safi, strings.ReplaceAll(s, " ", "-")
	}
	return afi, safi, record.FamilyName(afi, safi)
}

func routeFromNLRI(raw json.RawMessage, fam, rib string) (*record.Route, error) {
	afi, safi, name := family(fam)
	r := &record.Route{AFI: afi, SAFI: safi, Family: name, RIB: rib}
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		// compact mode: the NLRI is the bare prefix
		var p string
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("decode nlri: %w", err)
		}
		r.Prefix = p
		return r, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("decode nlri: %w", err)
	}
	str := func(k string) string {
		var s string
		if v, ok := obj[k]; ok && json.Unmarshal(v, &s) != nil {
			s = string(bytes.Trim(v, `"`))
		}
		return s
	}
	var o struct{ NLRI, PathInfo, RD, String, NextHop, Raw string }
	o.NLRI, o.PathInfo, o.RD, o.String, o.NextHop, o.Raw = str("nlri"), str("path-information"), str("rd"), str("string"), str("next-hop"), str("raw")
	r.RD = o.RD
	r.NextHop = o.NextHop
	if o.PathInfo != "" {
		if a, err := netip.ParseAddr(o.PathInfo); err == nil && a.Is4() {
			b := a.As4()
			r.PathID = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		} else if v, err := strconv.ParseUint(o.PathInfo, 10, 32); err == nil {
			r.PathID = uint32(v)
		}
	}
	var labels [][]json.Number
	if v, ok := obj["label"]; ok && json.Unmarshal(v, &labels) == nil {
		for _, l := range labels {
			if len(l) == 0 {
				continue
			}
			if v, err := strconv.ParseUint(string(l[0]), 10, 32); err == nil {
				r.Labels = append(r.Labels, uint32(v))
			}
		}
	}
	switch {
	case o.NLRI != "":
		r.Prefix = o.NLRI
	case o.String != "":
		// flowspec: exaBGP's readable rule, e.g. "flow destination-ipv4 203.0.113.0/24 protocol =tcp"
		r.Prefix = o.String
		r.ExaBGP = map[string]json.RawMessage{"nlri": compactJSON(raw)}
	default:
		// EVPN, VPLS, MUP, MVPN, BGP-LS, …: no prefix of their own; the
		// canonical JSON object is both readable and a stable key.
		r.Prefix = canonicalJSON(raw)
		r.ExaBGP = map[string]json.RawMessage{"nlri": compactJSON(raw)}
		if o.Raw != "" {
			if b, err := hex.DecodeString(strings.TrimPrefix(o.Raw, "0x")); err == nil {
				r.NLRI = b
			}
		}
	}
	return r, nil
}

func compactJSON(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// canonicalJSON re-encodes an object with sorted keys and full number precision.
func canonicalJSON(raw json.RawMessage) string {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return string(compactJSON(raw))
	}
	b, err := json.Marshal(v)
	if err != nil {
		return string(compactJSON(raw))
	}
	return string(b)
}

// attributes is an UPDATE's decoded path attributes, shared by its prefixes.
type attributes struct {
	origin           string
	asPath           []uint32
	segments         []record.ASPathSegment
	med, localPref   *uint32
	atomicAggregate  bool
	aggregator       string
	originatorID     string
	clusterList      []string
	communities      []string
	extCommunities   []string
	largeCommunities []string
	other            []record.OtherAttribute
	extra            map[string]json.RawMessage
}

func (a *attributes) applyTo(r *record.Route) {
	r.Origin = a.origin
	r.ASPath = a.asPath
	r.ASPathSegments = a.segments
	r.MED = a.med
	r.LocalPref = a.localPref
	r.AtomicAggregate = a.atomicAggregate
	r.Aggregator = a.aggregator
	r.OriginatorID = a.originatorID
	r.ClusterList = a.clusterList
	r.Communities = a.communities
	r.ExtCommunities = a.extCommunities
	r.LargeCommunities = a.largeCommunities
	r.Attributes = a.other
	if len(a.extra) > 0 {
		if r.ExaBGP == nil {
			r.ExaBGP = make(map[string]json.RawMessage, len(a.extra))
		}
		for k, v := range a.extra {
			r.ExaBGP[k] = v
		}
	}
}

func decodeAttributes(in map[string]json.RawMessage) (*attributes, error) {
	a := &attributes{}
	// 4.2 gives the AS_PATH as up to four flat lists; keep their segment kinds.
	var seq4, set4, cseq4, cset4 []uint32
	have4 := false
	for _, k := range sortedKeys(in) {
		v := in[k]
		var err error
		switch k {
		case "origin":
			err = json.Unmarshal(v, &a.origin)
		case "as-path":
			v = bytes.TrimSpace(v)
			if len(v) > 0 && v[0] == '{' {
				err = a.decodeASPath5(v)
			} else {
				have4 = true
				err = json.Unmarshal(v, &seq4)
			}
		case "as-set":
			have4 = true
			err = json.Unmarshal(v, &set4)
		case "confederation-path":
			have4 = true
			err = json.Unmarshal(v, &cseq4)
		case "confederation-set":
			have4 = true
			err = json.Unmarshal(v, &cset4)
		case "med":
			a.med, err = uint32Ptr(v)
		case "local-preference":
			a.localPref, err = uint32Ptr(v)
		case "atomic-aggregate":
			err = json.Unmarshal(v, &a.atomicAggregate)
		case "aggregator":
			var s string
			err = json.Unmarshal(v, &s)
			a.aggregator = strings.Trim(strings.TrimSpace(s), "() ")
		case "originator-id":
			err = json.Unmarshal(v, &a.originatorID)
		case "cluster-list":
			err = json.Unmarshal(v, &a.clusterList)
		case "community":
			a.communities, err = joinedNumbers(v)
		case "large-community":
			a.largeCommunities, err = joinedNumbers(v)
		case "extended-community", "extended-community-ipv6":
			var ecs []struct {
				Value  json.Number `json:"value"`
				String string      `json:"string"`
			}
			if err = json.Unmarshal(v, &ecs); err == nil {
				for _, ec := range ecs {
					s := ec.String
					if s == "" {
						s = ec.Value.String()
					}
					a.extCommunities = append(a.extCommunities, s)
				}
				a.keepExtra(k, v) // the uint64 values, at full precision
			}
		default:
			if t, f, ok := genericAttribute(k); ok {
				var s string
				if json.Unmarshal(v, &s) == nil {
					if b, herr := hex.DecodeString(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")); herr == nil {
						a.other = append(a.other, record.OtherAttribute{Type: t, Flags: f, Value: b})
						continue
					}
				}
			}
			a.keepExtra(k, v)
		}
		if err != nil {
			return nil, fmt.Errorf("decode attribute %q: %w", k, err)
		}
	}
	if have4 {
		a.asPath = append(a.asPath, seq4...)
		a.asPath = append(a.asPath, set4...)
		if len(set4) > 0 || len(cseq4) > 0 || len(cset4) > 0 {
			for _, s := range []record.ASPathSegment{{Type: "confed-sequence", ASNs: cseq4}, {Type: "confed-set", ASNs: cset4}, {Type: "sequence", ASNs: seq4}, {Type: "set", ASNs: set4}} {
				if len(s.ASNs) > 0 {
					a.segments = append(a.segments, s)
				}
			}
		}
	}
	return a, nil
}

func (a *attributes) keepExtra(k string, v json.RawMessage) {
	if a.extra == nil {
		a.extra = make(map[string]json.RawMessage)
	}
	a.extra[k] = compactJSON(v)
}

// decodeASPath5 reads 5.x's {"0": {"element": "as-sequence", "value": [..]}, …}.
func (a *attributes) decodeASPath5(v json.RawMessage) error {
	var segs map[string]struct {
		Element string   `json:"element"`
		Value   []uint32 `json:"value"`
	}
	if err := json.Unmarshal(v, &segs); err != nil {
		return err
	}
	idx := make([]int, 0, len(segs))
	byIdx := make(map[int]string, len(segs))
	for k := range segs {
		i, err := strconv.Atoi(k)
		if err != nil {
			return fmt.Errorf("as-path segment index %q", k)
		}
		idx = append(idx, i)
		byIdx[i] = k
	}
	sort.Ints(idx)
	plain := true
	for _, i := range idx {
		s := segs[byIdx[i]]
		typ := strings.TrimPrefix(s.Element, "as-")
		switch s.Element {
		case "confed-sequence", "confederation-sequence":
			typ = "confed-sequence"
		case "confed-set", "confederation-set":
			typ = "confed-set"
		}
		if !strings.HasPrefix(typ, "confed") {
			a.asPath = append(a.asPath, s.Value...)
		}
		if typ != "sequence" {
			plain = false
		}
		a.segments = append(a.segments, record.ASPathSegment{Type: typ, ASNs: s.Value})
	}
	if plain && len(a.segments) <= 1 {
		a.segments = nil
	}
	return nil
}

func uint32Ptr(v json.RawMessage) (*uint32, error) {
	n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 32)
	if err != nil {
		return nil, err
	}
	u := uint32(n)
	return &u, nil
}

// joinedNumbers turns [[65001,100],[65535,65281]] into ["65001:100","65535:65281"].
func joinedNumbers(v json.RawMessage) ([]string, error) {
	var lists [][]json.Number
	if err := json.Unmarshal(v, &lists); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(lists))
	for _, l := range lists {
		parts := make([]string, len(l))
		for i, n := range l {
			parts[i] = n.String()
		}
		out = append(out, strings.Join(parts, ":"))
	}
	return out, nil
}

// genericAttribute parses exaBGP's name for an attribute it does not know,
// "attribute-0x99-0x60" (type, flags).
func genericAttribute(k string) (uint8, uint8, bool) {
	rest, ok := strings.CutPrefix(k, "attribute-0x")
	if !ok {
		return 0, 0, false
	}
	ts, fs, ok := strings.Cut(rest, "-0x")
	if !ok {
		return 0, 0, false
	}
	t, err1 := strconv.ParseUint(ts, 16, 8)
	f, err2 := strconv.ParseUint(fs, 16, 8)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uint8(t), uint8(f), true
}
