package exabgp

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Request is a route command from central, as JSON on NATS.
type Request struct {
	ID   string `json:"id"`
	Verb string `json:"verb"` // announce-route, withdraw-route, announce-flow, withdraw-flow, route-refresh, list
	// Neighbors scopes the command to these exaBGP neighbors (peer
	// addresses); empty means every neighbor of the process.
	Neighbors []string `json:"neighbors,omitempty"`
	Route     *Route   `json:"route,omitempty"`
	Flow      *Flow    `json:"flow,omitempty"`
	// Family is the "afi safi" of a route-refresh, e.g. "ipv4 unicast".
	Family string `json:"family,omitempty"`
}

// Route is a unicast route to announce or withdraw.
type Route struct {
	Prefix           string   `json:"prefix"`
	NextHop          string   `json:"next_hop,omitempty"` // an address or "self"
	Origin           string   `json:"origin,omitempty"`   // igp, egp, incomplete
	ASPath           []uint32 `json:"as_path,omitempty"`
	MED              *uint32  `json:"med,omitempty"`
	LocalPref        *uint32  `json:"local_pref,omitempty"`
	Communities      []string `json:"communities,omitempty"`
	LargeCommunities []string `json:"large_communities,omitempty"`
	ExtCommunities   []string `json:"extended_communities,omitempty"`
}

// Flow is a flowspec rule: match components and actions, in exaBGP's words.
type Flow struct {
	Match FlowMatch `json:"match"`
	Then  FlowThen  `json:"then"`
}

// FlowMatch components; operators follow exaBGP's syntax ("=80", ">1024&<2000").
type FlowMatch struct {
	Destination     string   `json:"destination,omitempty"`
	Source          string   `json:"source,omitempty"`
	Protocol        []string `json:"protocol,omitempty"`
	Port            []string `json:"port,omitempty"`
	DestinationPort []string `json:"destination_port,omitempty"`
	SourcePort      []string `json:"source_port,omitempty"`
	ICMPType        []string `json:"icmp_type,omitempty"`
	ICMPCode        []string `json:"icmp_code,omitempty"`
	TCPFlags        []string `json:"tcp_flags,omitempty"`
	PacketLength    []string `json:"packet_length,omitempty"`
	DSCP            []string `json:"dscp,omitempty"`
	Fragment        []string `json:"fragment,omitempty"`
}

// FlowThen actions.
type FlowThen struct {
	Discard   bool     `json:"discard,omitempty"`
	RateLimit *uint32  `json:"rate_limit,omitempty"` // bytes/s
	Redirect  string   `json:"redirect,omitempty"`   // route target "ASN:NN" or an address
	MarkDSCP  *uint8   `json:"mark,omitempty"`
	Community []string `json:"community,omitempty"`
}

// Reply answers a Request.
type Reply struct {
	ID string `json:"id"`
	// Result is done or error (exaBGP's ack), timeout (no ack in time),
	// rejected (local policy or invalid request: never sent to exaBGP), or ok (list).
	Result  string `json:"result"`
	Reason  string `json:"reason,omitempty"`
	Command string `json:"command,omitempty"` // the line written to exaBGP
	// Routes is the answer to list: the injected routes and flows.
	Routes []JournalEntry `json:"routes,omitempty"`
}

// Results of a command, also the "result" metric label.
const (
	ResultDone     = "done"
	ResultError    = "error"
	ResultTimeout  = "timeout"
	ResultRejected = "rejected"
	ResultOK       = "ok"
)

// ErrRejected wraps every policy or validation rejection.
var ErrRejected = errors.New("rejected")

// Reasons of a rejection: a small fixed set, so they can label metrics.
const (
	RejectVerb         = "verb"          // unknown or not allowed verb
	RejectNeighbor     = "neighbor"      // selector missing, invalid or not allowed
	RejectPrefix       = "prefix"        // invalid, or outside the allowed prefixes
	RejectPrefixLength = "prefix_length" // more specific than allowed
	RejectNextHop      = "next_hop"      // missing, invalid or not allowed
	RejectMaxRoutes    = "max_routes"    // policy.max_routes injected routes reached
	RejectRate         = "rate"          // policy.rate_per_second exceeded
	RejectInvalid      = "invalid"       // any other malformed request
)

// RejectError is a rejection by policy or validation. errors.Is(err,
// ErrRejected) holds for it; errors.As gives its Reason.
type RejectError struct {
	Reason string // one of the Reject* constants
	Msg    string
}

func (e *RejectError) Error() string { return ErrRejected.Error() + ": " + e.Msg }

func (e *RejectError) Unwrap() error { return ErrRejected }

// RejectReason is the reason of a rejection error, RejectInvalid for any
// other error; it never returns an unbounded value.
func RejectReason(err error) string {
	var re *RejectError
	if errors.As(err, &re) {
		switch re.Reason {
		case RejectVerb, RejectNeighbor, RejectPrefix, RejectPrefixLength, RejectNextHop, RejectMaxRoutes, RejectRate:
			return re.Reason
		}
	}
	return RejectInvalid
}

func reject(reason, format string, a ...any) error {
	return &RejectError{Reason: reason, Msg: fmt.Sprintf(format, a...)}
}

// safeToken is what any value spliced into an exaBGP command must match: it
// can hold no space, newline, brace, bracket or semicolon, so a request can
// never smuggle a second command or another clause.
var safeToken = regexp.MustCompile(`^[A-Za-z0-9.:/=<>&!_+-]{1,64}$`)

var (
	communityRe = regexp.MustCompile(`^([0-9]{1,10}:[0-9]{1,10}|no-export|no-advertise|no-export-subconfed|nopeer|blackhole|graceful-shutdown|accept-own)$`)
	largeRe     = regexp.MustCompile(`^[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}$`)
	extRe       = regexp.MustCompile(`^[a-z-]{1,24}:[0-9A-Za-z.:]{1,48}$`)
)

// Policy checks requests against the local policy. It holds no state: rate
// and route-count limits are applied by the caller with its own state.
type Policy struct {
	cfg       PolicyConfig
	verbs     map[string]bool
	prefixes  []allowedPrefix
	neighbors map[netip.Addr]bool
	nextHops  []netip.Prefix
	selfOK    bool
}

// NewPolicy compiles a validated PolicyConfig.
func NewPolicy(cfg PolicyConfig) (*Policy, error) {
	p := &Policy{cfg: cfg, verbs: map[string]bool{}, neighbors: map[netip.Addr]bool{}}
	for _, v := range cfg.AllowedVerbs {
		p.verbs[v] = true
	}
	for _, s := range cfg.AllowedPrefixes {
		ap, err := parseAllowedPrefix(s)
		if err != nil {
			return nil, fmt.Errorf("allowed prefix %q: %w", s, err)
		}
		p.prefixes = append(p.prefixes, ap)
	}
	for _, s := range cfg.AllowedNeighbors {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("allowed neighbor %q: %w", s, err)
		}
		p.neighbors[a] = true
	}
	for _, s := range cfg.AllowedNextHops {
		if s == "self" {
			p.selfOK = true
			continue
		}
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("allowed next hop %q: %w", s, err)
		}
		p.nextHops = append(p.nextHops, pf.Masked())
	}
	return p, nil
}

// Command is a checked request rendered for exaBGP.
type Command struct {
	Verb string
	// Line is the exaBGP API command, without newline.
	Line string
	// Key identifies the injected route or flow in the journal ("" for
	// route-refresh): a later withdraw with the same key removes it.
	Key string
	// Announce is true for announce-route and announce-flow.
	Announce bool
	// Neighbors is the selector, for replays scoped to one neighbor.
	Neighbors []string
	// Body is the command without the neighbor selector.
	Body string
}

// Check validates a request against the policy and renders it. Every error
// wraps ErrRejected and says why.
func (p *Policy) Check(req *Request) (*Command, error) {
	if !p.verbs[req.Verb] {
		if !slices.Contains(allVerbs, req.Verb) {
			return nil, reject(RejectVerb, "unknown verb %q", req.Verb)
		}
		return nil, reject(RejectVerb, "verb %s not allowed by policy", req.Verb)
	}
	var sel []string
	for _, n := range req.Neighbors {
		a, err := netip.ParseAddr(n)
		if err != nil {
			return nil, reject(RejectNeighbor, "invalid neighbor %q", n)
		}
		if !p.neighbors[a.Unmap()] && !p.neighbors[a] {
			return nil, reject(RejectNeighbor, "neighbor %s not allowed by policy", a)
		}
		sel = append(sel, a.String())
	}
	slices.Sort(sel)
	sel = slices.Compact(sel)
	if len(sel) == 0 && len(p.neighbors) > 0 {
		return nil, reject(RejectNeighbor, "a neighbor selector is required by policy (allowed_neighbors is set)")
	}
	c := &Command{Verb: req.Verb, Neighbors: sel}
	var err error
	switch req.Verb {
	case VerbAnnounceRoute, VerbWithdrawRoute:
		err = p.renderRoute(req, c)
	case VerbAnnounceFlow, VerbWithdrawFlow:
		err = p.renderFlow(req, c)
	case VerbRouteRefresh:
		afi, safi, ok := strings.Cut(strings.TrimSpace(req.Family), " ")
		if !ok || !safeToken.MatchString(afi) || !safeToken.MatchString(safi) {
			return nil, reject(RejectInvalid, "route-refresh needs family \"<afi> <safi>\", not %q", req.Family)
		}
		c.Body = "announce route-refresh " + afi + " " + safi
	}
	if err != nil {
		return nil, err
	}
	c.Line = withSelector(sel, c.Body)
	if c.Key != "" {
		c.Key = strings.Join(sel, ",") + "|" + c.Key
	}
	return c, nil
}

// withSelector prefixes exaBGP's neighbor selector: "neighbor A, neighbor B <cmd>".
func withSelector(neighbors []string, body string) string {
	if len(neighbors) == 0 {
		return body
	}
	parts := make([]string, len(neighbors))
	for i, n := range neighbors {
		parts[i] = "neighbor " + n
	}
	return strings.Join(parts, ", ") + " " + body
}

// allowedPrefix is one policy.allowed_prefixes entry, "CIDR" or "CIDR le N".
type allowedPrefix struct {
	net netip.Prefix
	// le is the longest prefix length allowed inside net; 0 when the entry
	// has none and the family-wide max_prefix_length_v4/_v6 applies.
	le int
}

// parseAllowedPrefix reads "100.100.0.0/16" or "100.100.0.0/16 le 28".
// Like a prefix list, le must be between the CIDR's own length and the
// family's address length.
func parseAllowedPrefix(s string) (allowedPrefix, error) {
	f := strings.Fields(s)
	if len(f) != 1 && len(f) != 3 {
		return allowedPrefix{}, fmt.Errorf("want \"CIDR\" or \"CIDR le N\", not %q", s)
	}
	pf, err := netip.ParsePrefix(f[0])
	if err != nil {
		return allowedPrefix{}, fmt.Errorf("invalid CIDR: %w", err)
	}
	ap := allowedPrefix{net: pf.Masked()}
	if len(f) == 1 {
		return ap, nil
	}
	if f[1] != "le" {
		return allowedPrefix{}, fmt.Errorf("want \"le\" after the CIDR, not %q", f[1])
	}
	le, err := strconv.Atoi(f[2])
	if err != nil || le < pf.Bits() || le > pf.Addr().BitLen() || le == 0 {
		return allowedPrefix{}, fmt.Errorf("le %q must be a length between %d and %d", f[2], max(pf.Bits(), 1), pf.Addr().BitLen())
	}
	ap.le = le
	return ap, nil
}

// checkPrefix checks that a prefix lies in one of the allowed prefixes and,
// for routes (not flow rules, which usually match single hosts), that it is
// not longer than that entry's le, or without one the family-wide maximum.
func (p *Policy) checkPrefix(s, what string, maxLen bool) (netip.Prefix, error) {
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, reject(RejectPrefix, "invalid %s %q", what, s)
	}
	if pf != pf.Masked() {
		return netip.Prefix{}, reject(RejectPrefix, "%s %s has host bits set", what, s)
	}
	familyMax := p.cfg.MaxPrefixLengthV4
	if pf.Addr().Is6() {
		familyMax = p.cfg.MaxPrefixLengthV6
	}
	// The longest length any covering entry allows, for the rejection.
	longest := -1
	for _, a := range p.prefixes {
		if a.net.Addr().Is4() != pf.Addr().Is4() || a.net.Bits() > pf.Bits() || !a.net.Contains(pf.Addr()) {
			continue
		}
		limit := familyMax
		if a.le > 0 {
			limit = a.le
		}
		if !maxLen || pf.Bits() <= limit {
			return pf, nil
		}
		longest = max(longest, limit)
	}
	if longest >= 0 {
		return netip.Prefix{}, reject(RejectPrefixLength, "%s %s is longer than /%d", what, pf, longest)
	}
	return netip.Prefix{}, reject(RejectPrefix, "%s %s is outside the allowed prefixes", what, pf)
}

func (p *Policy) renderRoute(req *Request, c *Command) error {
	r := req.Route
	if r == nil || req.Flow != nil {
		return reject(RejectInvalid, "%s needs a route and no flow", req.Verb)
	}
	// A withdraw is not held to the length limit: a route announced under a
	// wider policy must stay removable after the policy is narrowed.
	pf, err := p.checkPrefix(r.Prefix, "prefix", req.Verb != VerbWithdrawRoute)
	if err != nil {
		return err
	}
	var b strings.Builder
	verb := "announce"
	if req.Verb == VerbWithdrawRoute {
		verb = "withdraw"
	}
	b.WriteString(verb + " route " + pf.String())
	if r.NextHop != "" || req.Verb == VerbAnnounceRoute {
		nh, err := p.checkNextHop(r.NextHop, pf)
		if err != nil {
			return err
		}
		b.WriteString(" next-hop " + nh)
	}
	if req.Verb == VerbAnnounceRoute {
		switch r.Origin {
		case "":
		case "igp", "egp", "incomplete":
			b.WriteString(" origin " + r.Origin)
		default:
			return reject(RejectInvalid, "invalid origin %q", r.Origin)
		}
		if len(r.ASPath) > 0 {
			if len(r.ASPath) > 64 {
				return reject(RejectInvalid, "as-path longer than 64")
			}
			b.WriteString(" as-path [")
			for _, as := range r.ASPath {
				b.WriteString(" " + strconv.FormatUint(uint64(as), 10))
			}
			b.WriteString(" ]")
		}
		if r.MED != nil {
			b.WriteString(" med " + strconv.FormatUint(uint64(*r.MED), 10))
		}
		if r.LocalPref != nil {
			b.WriteString(" local-preference " + strconv.FormatUint(uint64(*r.LocalPref), 10))
		}
		if err := writeList(&b, "community", r.Communities, communityRe); err != nil {
			return err
		}
		if err := writeList(&b, "large-community", r.LargeCommunities, largeRe); err != nil {
			return err
		}
		if err := writeList(&b, "extended-community", r.ExtCommunities, extRe); err != nil {
			return err
		}
		c.Announce = true
	}
	c.Body = b.String()
	c.Key = "route " + pf.String()
	return nil
}

func (p *Policy) checkNextHop(s string, pf netip.Prefix) (string, error) {
	if s == "" {
		return "", reject(RejectNextHop, "announce-route needs a next_hop")
	}
	if s == "self" {
		if !p.selfOK {
			return "", reject(RejectNextHop, "next hop self not allowed by policy")
		}
		return s, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return "", reject(RejectNextHop, "invalid next hop %q", s)
	}
	for _, n := range p.nextHops {
		if n.Contains(a) {
			return a.String(), nil
		}
	}
	_ = pf
	return "", reject(RejectNextHop, "next hop %s not allowed by policy", a)
}

func writeList(b *strings.Builder, name string, vals []string, re *regexp.Regexp) error {
	if len(vals) == 0 {
		return nil
	}
	if len(vals) > 64 {
		return reject(RejectInvalid, "more than 64 %s values", name)
	}
	b.WriteString(" " + name + " [")
	for _, v := range vals {
		if !re.MatchString(v) {
			return reject(RejectInvalid, "invalid %s %q", name, v)
		}
		b.WriteString(" " + v)
	}
	b.WriteString(" ]")
	return nil
}

func (p *Policy) renderFlow(req *Request, c *Command) error {
	f := req.Flow
	if f == nil || req.Route != nil {
		return reject(RejectInvalid, "%s needs a flow and no route", req.Verb)
	}
	var m strings.Builder
	n := 0
	if f.Match.Destination != "" {
		pf, err := p.checkPrefix(f.Match.Destination, "flow destination", false)
		if err != nil {
			return err
		}
		m.WriteString(" destination " + pf.String() + ";")
		n++
	}
	if f.Match.Source != "" {
		pf, err := p.checkPrefix(f.Match.Source, "flow source", false)
		if err != nil {
			return err
		}
		m.WriteString(" source " + pf.String() + ";")
		n++
	}
	if n == 0 {
		return reject(RejectPrefix, "a flow needs a destination or source prefix inside the allowed prefixes")
	}
	for _, comp := range []struct {
		name string
		vals []string
	}{
		{"protocol", f.Match.Protocol}, {"port", f.Match.Port}, {"destination-port", f.Match.DestinationPort},
		{"source-port", f.Match.SourcePort}, {"icmp-type", f.Match.ICMPType}, {"icmp-code", f.Match.ICMPCode},
		{"tcp-flags", f.Match.TCPFlags}, {"packet-length", f.Match.PacketLength}, {"dscp", f.Match.DSCP},
		{"fragment", f.Match.Fragment},
	} {
		if len(comp.vals) == 0 {
			continue
		}
		if len(comp.vals) > 16 {
			return reject(RejectInvalid, "more than 16 flow %s values", comp.name)
		}
		for _, v := range comp.vals {
			if !safeToken.MatchString(v) {
				return reject(RejectInvalid, "invalid flow %s %q", comp.name, v)
			}
		}
		if len(comp.vals) == 1 {
			m.WriteString(" " + comp.name + " " + comp.vals[0] + ";")
		} else {
			m.WriteString(" " + comp.name + " [ " + strings.Join(comp.vals, " ") + " ];")
		}
	}
	var t strings.Builder
	if f.Then.Discard {
		t.WriteString(" discard;")
	}
	if f.Then.RateLimit != nil {
		t.WriteString(" rate-limit " + strconv.FormatUint(uint64(*f.Then.RateLimit), 10) + ";")
	}
	if f.Then.Redirect != "" {
		if !safeToken.MatchString(f.Then.Redirect) {
			return reject(RejectInvalid, "invalid flow redirect %q", f.Then.Redirect)
		}
		t.WriteString(" redirect " + f.Then.Redirect + ";")
	}
	if f.Then.MarkDSCP != nil {
		if *f.Then.MarkDSCP > 63 {
			return reject(RejectInvalid, "flow mark must be a DSCP value 0-63")
		}
		t.WriteString(" mark " + strconv.Itoa(int(*f.Then.MarkDSCP)) + ";")
	}
	if len(f.Then.Community) > 0 {
		var cb strings.Builder
		if err := writeList(&cb, "community", f.Then.Community, communityRe); err != nil {
			return err
		}
		t.WriteString(cb.String() + ";")
	}
	if req.Verb == VerbAnnounceFlow && t.Len() == 0 {
		return reject(RejectInvalid, "announce-flow needs at least one action")
	}
	match := "match {" + m.String() + " }"
	verb := "withdraw"
	if req.Verb == VerbAnnounceFlow {
		verb = "announce"
		c.Announce = true
	}
	c.Body = verb + " flow route { " + match + " then {" + t.String() + " } }"
	c.Key = "flow " + match
	return nil
}
