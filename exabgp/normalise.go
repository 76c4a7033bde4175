package exabgp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/bgpedge/bgpedge/internal/bgpattr"
	"github.com/bgpedge/bgpedge/record"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
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
//
// An UPDATE that comes only as hex (the `packets` api option) is decoded
// into the same route events. Its 4-byte AS and Add-Path settings come from
// the negotiated block in the event if exaBGP sent one (the `negotiated`
// api option), else 4-byte AS and no Add-Path are assumed: Normaliser also
// remembers earlier `negotiated` events. A raw UPDATE that does not decode
// stays one update event with its hex, followed by a decode-error event.
func Normalise(m *Message) ([]record.Event, error) {
	return normalise(m, nil)
}

// packetErrorData is the Data of the decode-error event of a raw UPDATE.
type packetErrorData struct {
	Error  string `json:"error"`
	Header string `json:"header,omitempty"`
	Body   string `json:"body,omitempty"`
}

// normalise is Normalise with the capabilities remembered for the session
// (nil: none).
func normalise(m *Message, remembered *sessionCaps) ([]record.Event, error) {
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
	var packetErr *record.Event
	if hdr, body, ok := rawUpdate(m); ok {
		var caps sessionCaps
		if remembered != nil {
			caps = *remembered
		}
		if len(rawOrNil(n.Negotiated)) > 0 {
			if c, ok := parseNegotiated(n.Negotiated); ok {
				caps = c
			}
		}
		routes, err := decodeRawUpdate(hdr, body, caps.as2, caps.addPath(n.Direction), ribOf(n.Direction))
		if err == nil && len(routes) > 0 {
			evs := make([]record.Event, len(routes))
			for i, r := range routes {
				evs[i] = base
				evs[i].Type = TypeRoute
				evs[i].Route = r
			}
			return evs, nil
		}
		if err != nil {
			e := base
			e.Type = TypeDecodeError
			e.Data = packetErrorData{Error: err.Error(), Header: hdr, Body: body}
			packetErr = &e
		}
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
	if packetErr != nil {
		return []record.Event{e, *packetErr}, nil
	}
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
	nextHop          string // NEXT_HOP, of raw updates only
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

// Decoding of raw UPDATEs. With exaBGP's `packets` api option (and no
// `parsed`), an update event carries only the message as hex, in
// neighbor.message (packets) or at the top level (4.2's header/body next to
// a parsed form). bgpedge then decodes the UPDATE itself so it still yields
// the route events a parsed update would, with the same fields.

// sessionCaps are the negotiated capabilities that change how an UPDATE is
// encoded on the wire.
type sessionCaps struct {
	as2 bool // the session did not negotiate 4-byte AS numbers
	// Add-Path families, per direction: what exaBGP receives with path ids
	// and what it sends with them may differ.
	addPathReceive, addPathSend map[bgp.Family]bool
}

// addPath is the Add-Path families of UPDATEs going in direction.
func (c sessionCaps) addPath(direction string) map[bgp.Family]bool {
	if direction == "send" || direction == "out" {
		return c.addPathSend
	}
	return c.addPathReceive
}

// maxSessionCaps bounds the Normaliser's memory of negotiated capabilities:
// exaBGP runs a handful of sessions, but neighbor keys come from input.
const maxSessionCaps = 1024

// Normaliser is Normalise with a memory of each session's `negotiated`
// event (4-byte AS, Add-Path), used to decode raw UPDATEs of that session
// that do not carry the negotiated block themselves. It remembers at most
// maxSessionCaps sessions (an arbitrary one is forgotten beyond) and forgets
// a session when it goes down. A forgotten or never-seen session is decoded
// with exaBGP's usual defaults: 4-byte AS and no Add-Path. The zero value
// is ready to use; it is safe for concurrent use, but the memory is only
// right if a session's events are normalised in order.
type Normaliser struct {
	mu       sync.Mutex
	sessions map[string]sessionCaps
	// DecodeErrors counts raw UPDATEs that did not decode (each kept raw
	// and reported by a decode-error event).
	DecodeErrors atomic.Uint64
}

func sessionKey(n *Neighbor) string { return n.Address.Local + "|" + n.Address.Peer }

// Normalise is the package Normalise with the session memory described on
// Normaliser.
func (z *Normaliser) Normalise(m *Message) ([]record.Event, error) {
	var caps *sessionCaps
	if n := m.Neighbor; n != nil {
		key := sessionKey(n)
		z.mu.Lock()
		switch {
		case m.Type == "negotiated" && len(rawOrNil(n.Negotiated)) > 0:
			if c, ok := parseNegotiated(n.Negotiated); ok {
				if _, known := z.sessions[key]; !known && len(z.sessions) >= maxSessionCaps {
					for k := range z.sessions {
						delete(z.sessions, k)
						break
					}
				}
				if z.sessions == nil {
					z.sessions = make(map[string]sessionCaps)
				}
				z.sessions[key] = c
			}
		case m.Type == "state" && n.State != "up":
			// The next session negotiates again.
			delete(z.sessions, key)
		default:
			if c, ok := z.sessions[key]; ok {
				caps = &c
			}
		}
		z.mu.Unlock()
	}
	evs, err := normalise(m, caps)
	for _, e := range evs {
		if e.Type == TypeDecodeError {
			z.DecodeErrors.Add(1)
		}
	}
	return evs, err
}

// parseNegotiated reads exaBGP's negotiated block: {"asn4": true,
// "add_path": {"send": ["ipv4 unicast"], "receive": [...]}}. The event itself
// has no direction: both sets are kept, and each UPDATE takes the one of its
// own direction.
func parseNegotiated(raw json.RawMessage) (sessionCaps, bool) {
	var n struct {
		ASN4    *bool `json:"asn4"`
		AddPath struct {
			Send    []string `json:"send"`
			Receive []string `json:"receive"`
		} `json:"add_path"`
	}
	if json.Unmarshal(raw, &n) != nil {
		return sessionCaps{}, false
	}
	return sessionCaps{
		as2:            n.ASN4 != nil && !*n.ASN4,
		addPathReceive: families(n.AddPath.Receive),
		addPathSend:    families(n.AddPath.Send),
	}, true
}

func families(names []string) map[bgp.Family]bool {
	var m map[bgp.Family]bool
	for _, f := range names {
		afi, safi, _ := family(f)
		if afi == 0 || safi == 0 {
			continue
		}
		if m == nil {
			m = make(map[bgp.Family]bool)
		}
		m[bgp.NewFamily(afi, safi)] = true
	}
	return m
}

// rawUpdate returns the hex header and body of an update event that has no
// parsed form, or ok false.
func rawUpdate(m *Message) (header, body string, ok bool) {
	n := m.Neighbor
	if m.Type != "update" || n == nil {
		return "", "", false
	}
	if n.Message != nil {
		if n.Message.Update != nil || n.Message.EOR != nil {
			return "", "", false
		}
		if n.Message.Body != "" || n.Message.Header != "" {
			return n.Message.Header, n.Message.Body, true
		}
	}
	if m.Body != "" || m.Header != "" {
		return m.Header, m.Body, true
	}
	return "", "", false
}

func decodeHex(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X")
	return hex.DecodeString(s)
}

// Structural failures of a raw UPDATE.
var errPacket = errors.New("undecodable update packet")

// decodeRawUpdate decodes a raw UPDATE into routes of the same shape as
// normaliseUpdate makes from exaBGP's parsed form. An UPDATE without NLRI
// (attributes only) gives no routes, and stays one update event.
func decodeRawUpdate(header, body string, as2 bool, addPath map[bgp.Family]bool, rib string) ([]*record.Route, error) {
	hb, err := decodeHex(header)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", errPacket, err)
	}
	bb, err := decodeHex(body)
	if err != nil {
		return nil, fmt.Errorf("%w: body: %w", errPacket, err)
	}
	if len(hb) != 0 {
		// exaBGP's header is the 19-byte BGP header of the body.
		if len(hb) != 19 {
			return nil, fmt.Errorf("%w: header of %d bytes", errPacket, len(hb))
		}
		if l := int(hb[16])<<8 | int(hb[17]); l != 19+len(bb) {
			return nil, fmt.Errorf("%w: header length %d for a body of %d bytes", errPacket, l, len(bb))
		}
		if hb[18] != bgp.BGP_MSG_UPDATE {
			return nil, fmt.Errorf("%w: message type %d is no update", errPacket, hb[18])
		}
	}
	mo := &bgp.MarshallingOption{Use2ByteAS: as2}
	for f, on := range addPath {
		if on {
			if mo.AddPath == nil {
				mo.AddPath = make(map[bgp.Family]bgp.BGPAddPathMode)
			}
			mo.AddPath[f] = bgp.BGP_ADD_PATH_RECEIVE
		}
	}
	var u bgp.BGPUpdate
	if err := u.DecodeFromBytes(bb, mo); err != nil {
		return nil, fmt.Errorf("%w: %w", errPacket, err)
	}
	attrs, reach, unreach, err := packetAttributes(u.PathAttributes, as2)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errPacket, err)
	}
	newRoute := func(f bgp.Family) *record.Route {
		return &record.Route{AFI: f.Afi(), SAFI: f.Safi(), Family: record.FamilyName(f.Afi(), f.Safi()), RIB: rib}
	}
	var withdrawn, announced []*record.Route
	for _, pn := range u.WithdrawnRoutes {
		r := newRoute(bgp.RF_IPv4_UC)
		applyNLRI(r, pn)
		r.Action = "withdraw"
		withdrawn = append(withdrawn, r)
	}
	for _, un := range unreach {
		for _, pn := range un.Value {
			r := newRoute(bgp.NewFamily(un.AFI, un.SAFI))
			applyNLRI(r, pn)
			r.Action = "withdraw"
			withdrawn = append(withdrawn, r)
		}
	}
	announce := func(f bgp.Family, pn bgp.PathNLRI, nh string) {
		r := newRoute(f)
		applyNLRI(r, pn)
		attrs.applyTo(r)
		r.Action = "announce"
		r.NextHop = nh
		announced = append(announced, r)
	}
	for _, pn := range u.NLRI {
		announce(bgp.RF_IPv4_UC, pn, attrs.nextHop)
	}
	for _, re := range reach {
		nh := ""
		if re.Nexthop.IsValid() && !re.Nexthop.IsUnspecified() {
			nh = re.Nexthop.String()
		}
		for _, pn := range re.Value {
			announce(bgp.NewFamily(re.AFI, re.SAFI), pn, nh)
		}
	}
	// As in the parsed form: withdrawals first, families in name order.
	byFamily := func(a, b *record.Route) int { return strings.Compare(a.Family, b.Family) }
	slices.SortStableFunc(withdrawn, byFamily)
	slices.SortStableFunc(announced, byFamily)
	out := append(withdrawn, announced...)
	if len(out) == 0 && len(reach) == 0 {
		// End-of-RIB (RFC 4724): an empty UPDATE for IPv4 unicast, or one
		// holding only an empty MP_UNREACH_NLRI for another family.
		switch {
		case len(u.PathAttributes) == 0:
			out = append(out, &record.Route{Action: "withdraw", EndOfRIB: true, AFI: 1, SAFI: 1, Family: record.FamilyName(1, 1), RIB: rib})
		case len(u.PathAttributes) == 1 && len(unreach) == 1:
			r := newRoute(bgp.NewFamily(unreach[0].AFI, unreach[0].SAFI))
			r.Action, r.EndOfRIB = "withdraw", true
			out = append(out, r)
		}
	}
	return out, nil
}

func applyNLRI(r *record.Route, pn bgp.PathNLRI) {
	r.PathID = pn.ID
	switch n := pn.NLRI.(type) {
	case *bgp.IPAddrPrefix:
		r.Prefix = n.Prefix.String()
	case *bgp.LabeledIPAddrPrefix:
		r.Prefix, r.Labels = n.Prefix.String(), n.Labels.Labels
	case *bgp.LabeledVPNIPAddrPrefix:
		r.Prefix, r.Labels = n.Prefix.String(), n.Labels.Labels
		if n.RD != nil {
			r.RD = n.RD.String()
		}
	default:
		// Flowspec, EVPN, BGP-LS, …: GoBGP's readable form, which is not
		// exaBGP's, plus the NLRI bytes so nothing is lost.
		r.Prefix = n.String()
		if b, err := n.Serialize(); err == nil {
			r.NLRI = b
		}
	}
}

// packetAttributes turns GoBGP's path attributes into the attributes of
// parsed updates, with exaBGP's string forms where the fields hold strings.
func packetAttributes(pas []bgp.PathAttributeInterface, as2 bool) (*attributes, []*bgp.PathAttributeMpReachNLRI, []*bgp.PathAttributeMpUnreachNLRI, error) {
	a := &attributes{}
	var (
		reach        []*bgp.PathAttributeMpReachNLRI
		unreach      []*bgp.PathAttributeMpUnreachNLRI
		as           = bgpattr.AS4{}
		aggregator2  bool
		extValues    []extCommunityJSON
		haveExtended bool
	)
	for _, pa := range pas {
		switch v := pa.(type) {
		case *bgp.PathAttributeMpReachNLRI:
			reach = append(reach, v)
		case *bgp.PathAttributeMpUnreachNLRI:
			unreach = append(unreach, v)
		case *bgp.PathAttributeOrigin:
			switch v.Value {
			case 0:
				a.origin = "igp"
			case 1:
				a.origin = "egp"
			case 2:
				a.origin = "incomplete"
			default:
				a.origin = strconv.Itoa(int(v.Value))
			}
		case *bgp.PathAttributeAsPath:
			as.Path = bgpattr.Segments(v.Value)
		case *bgp.PathAttributeAs4Path:
			as.AS4Path = bgpattr.AS4Segments(v.Value)
		case *bgp.PathAttributeNextHop:
			a.nextHop = v.Value.String()
		case *bgp.PathAttributeMultiExitDisc:
			med := v.Value
			a.med = &med
		case *bgp.PathAttributeLocalPref:
			lp := v.Value
			a.localPref = &lp
		case *bgp.PathAttributeAtomicAggregate:
			a.atomicAggregate = true
		case *bgp.PathAttributeAggregator:
			as.Aggregator = &bgpattr.Aggregator{AS: v.Value.AS, Address: v.Value.Address}
			aggregator2 = v.Value.Askind == reflect.Uint16
		case *bgp.PathAttributeAs4Aggregator:
			as.AS4Aggregator = &bgpattr.Aggregator{AS: v.Value.AS, Address: v.Value.Address}
		case *bgp.PathAttributeOriginatorId:
			a.originatorID = v.Value.String()
		case *bgp.PathAttributeClusterList:
			for _, id := range v.Value {
				a.clusterList = append(a.clusterList, id.String())
			}
		case *bgp.PathAttributeCommunities:
			for _, c := range v.Value {
				a.communities = append(a.communities, bgpattr.Community(c))
			}
		case *bgp.PathAttributeLargeCommunities:
			for _, c := range v.Values {
				a.largeCommunities = append(a.largeCommunities, bgpattr.LargeCommunity(c))
			}
		case *bgp.PathAttributeExtendedCommunities:
			haveExtended = true
			for _, ec := range v.Value {
				b, err := ec.Serialize()
				if err != nil {
					return nil, nil, nil, fmt.Errorf("extended community: %w", err)
				}
				if len(b) != 8 {
					return nil, nil, nil, fmt.Errorf("extended community of %d bytes", len(b))
				}
				s := extCommunityString(b)
				a.extCommunities = append(a.extCommunities, s)
				extValues = append(extValues, extCommunityJSON{Value: binary.BigEndian.Uint64(b), String: s})
			}
		default:
			// Not broken out (AIGP, Prefix-SID, PMSI, unknown, …): kept as
			// type, flags and value, as parsed updates keep exaBGP's
			// "attribute-0xTT-0xFF" hex.
			b, err := pa.Serialize()
			if err != nil {
				return nil, nil, nil, fmt.Errorf("attribute %d: %w", pa.GetType(), err)
			}
			hl := 3
			if pa.GetFlags()&bgp.BGP_ATTR_FLAG_EXTENDED_LENGTH != 0 {
				hl = 4
			}
			if len(b) < hl {
				return nil, nil, nil, fmt.Errorf("attribute %d: %d bytes", pa.GetType(), len(b))
			}
			a.other = append(a.other, record.OtherAttribute{Type: uint8(pa.GetType()), Flags: uint8(pa.GetFlags()), Value: b[hl:]})
		}
	}
	if haveExtended {
		b, err := json.Marshal(extValues)
		if err != nil {
			return nil, nil, nil, err
		}
		// As parsed updates keep exaBGP's list: the uint64 values in full.
		a.keepExtra("extended-community", b)
	}
	// The AS4 attributes mean something only on a 2-byte session (RFC 6793).
	if !as2 {
		as.AS4Path = nil
	}
	if !as2 || !aggregator2 {
		as.AS4Aggregator = nil
	}
	path, aggr := as.Reconcile()
	if aggr != nil {
		a.aggregator = aggr.String()
	}
	a.setASPath(path)
	return a, reach, unreach, nil
}

// setASPath fills the path as decodeASPath5 does from 5.x's segment list.
func (a *attributes) setASPath(segs []bgpattr.Segment) {
	plain := true
	for _, s := range segs {
		if !s.Confed() {
			a.asPath = append(a.asPath, s.ASNs...)
		}
		if s.Type != bgp.BGP_ASPATH_ATTR_TYPE_SEQ {
			plain = false
		}
		a.segments = append(a.segments, record.ASPathSegment{Type: bgpattr.SegmentName(s.Type), ASNs: s.ASNs})
	}
	if plain && len(a.segments) <= 1 {
		a.segments = nil
	}
}

type extCommunityJSON struct {
	Value  uint64 `json:"value"`
	String string `json:"string"`
}

// extCommunityString writes an extended community as exaBGP does in its
// "string", for the kinds exaBGP names; others as exaBGP's hex.
func extCommunityString(b []byte) string {
	typ, sub := b[0], b[1]
	as2 := func() (uint64, uint64) {
		return uint64(binary.BigEndian.Uint16(b[2:4])), uint64(binary.BigEndian.Uint32(b[4:8]))
	}
	ip4 := func() (string, uint64) {
		return netip.AddrFrom4([4]byte(b[2:6])).String(), uint64(binary.BigEndian.Uint16(b[6:8]))
	}
	as4 := func() (uint64, uint64) {
		return uint64(binary.BigEndian.Uint32(b[2:6])), uint64(binary.BigEndian.Uint16(b[6:8]))
	}
	name := map[uint8]string{0x02: "target", 0x03: "origin"}[sub]
	switch {
	case name != "" && typ&0x3f == 0x00:
		g, l := as2()
		return fmt.Sprintf("%s:%d:%d", name, g, l)
	case name != "" && typ&0x3f == 0x01:
		g, l := ip4()
		return fmt.Sprintf("%s:%s:%d", name, g, l)
	case name != "" && typ&0x3f == 0x02:
		g, l := as4()
		return fmt.Sprintf("%s:%dL:%d", name, g, l)
	case typ == 0x80 && sub == 0x06, typ == 0x80 && sub == 0x0c:
		rate := math.Float32frombits(binary.BigEndian.Uint32(b[4:8]))
		s := "rate-limit:" + strconv.FormatInt(int64(rate), 10)
		if sub == 0x0c {
			s += ":packets"
		}
		return s
	case typ == 0x80 && sub == 0x07:
		var parts []string
		if b[7]&0x02 != 0 {
			parts = append(parts, "sample")
		}
		if b[7]&0x01 != 0 {
			parts = append(parts, "terminal")
		}
		return "action " + strings.Join(parts, "-")
	case typ == 0x80 && sub == 0x08:
		g, l := as2()
		return fmt.Sprintf("redirect:%d:%d", g, l)
	case typ == 0x81 && sub == 0x08:
		g, l := ip4()
		return fmt.Sprintf("redirect:%s:%d", g, l)
	case typ == 0x82 && sub == 0x08:
		g, l := as4()
		return fmt.Sprintf("redirect:%dL:%d", g, l)
	case typ == 0x80 && sub == 0x09:
		return "mark " + strconv.Itoa(int(b[7]&0x3f))
	case typ == 0x08 && sub == 0x00:
		return "copy-to-nexthop"
	}
	return "0x" + strings.ToUpper(hex.EncodeToString(b))
}
