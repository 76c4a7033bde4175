package exabgp

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func lePolicy(t *testing.T) *Policy {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Policy.AllowedVerbs = []string{VerbAnnounceRoute, VerbWithdrawRoute, VerbAnnounceFlow}
	cfg.Policy.AllowedPrefixes = []string{
		"100.100.0.0/16 le 28",
		"100.64.0.0/16",         // family-wide max (24) applies
		"198.51.100.0/24 le 24", // exactly the /24, nothing more specific
		"203.0.0.0/16 le 20",
		"203.0.113.0/24 le 30", // overlaps the /16 with a longer le
		"2001:db8::/32  le  48",
	}
	cfg.Policy.MaxPrefixLengthV4 = 24
	cfg.Policy.MaxPrefixLengthV6 = 64
	cfg.Policy.AllowedNeighbors = []string{"192.0.2.1"}
	cfg.Policy.AllowedNextHops = []string{"192.0.2.0/24", "2001:db8:ffff::/48"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(cfg.Policy)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPolicyPrefixLE: an allowed prefix's own le bounds the routes inside
// it; without le the family-wide maximum does; flows are not length-bound.
func TestPolicyPrefixLE(t *testing.T) {
	p := lePolicy(t)
	route := func(prefix, nh string) *Request {
		return &Request{Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.1"}, Route: &Route{Prefix: prefix, NextHop: nh}}
	}
	tests := []struct {
		name   string
		req    *Request
		reason string // "" accepted
		msg    string
	}{
		{"le allows longer than family max", route("100.100.1.16/28", "192.0.2.254"), "", ""},
		{"le bounds", route("100.100.1.0/29", "192.0.2.254"), RejectPrefixLength, "longer than /28"},
		{"the CIDR itself", route("100.100.0.0/16", "192.0.2.254"), "", ""},
		{"no le: family max", route("100.64.1.0/24", "192.0.2.254"), "", ""},
		{"no le: family max bounds", route("100.64.1.0/25", "192.0.2.254"), RejectPrefixLength, "longer than /24"},
		{"le equal to the CIDR", route("198.51.100.0/24", "192.0.2.254"), "", ""},
		{"le equal to the CIDR bounds", route("198.51.100.0/25", "192.0.2.254"), RejectPrefixLength, "longer than /24"},
		{"overlap: shorter le", route("203.0.8.0/21", "192.0.2.254"), RejectPrefixLength, "longer than /20"},
		{"overlap: longer le of the inner entry", route("203.0.113.4/30", "192.0.2.254"), "", ""},
		{"overlap: inner entry bounds", route("203.0.113.4/31", "192.0.2.254"), RejectPrefixLength, "longer than /30"},
		{"outside", route("10.0.0.0/24", "192.0.2.254"), RejectPrefix, "outside the allowed prefixes"},
		{"covering", route("100.0.0.0/8", "192.0.2.254"), RejectPrefix, "outside the allowed prefixes"},
		{"v6 le", route("2001:db8:1::/48", "2001:db8:ffff::1"), "", ""},
		{"v6 le bounds", route("2001:db8:1::/49", "2001:db8:ffff::1"), RejectPrefixLength, "longer than /48"},
		// A route announced under a wider policy stays removable after it is narrowed.
		{"withdraw not length-bound", &Request{Verb: VerbWithdrawRoute, Neighbors: []string{"192.0.2.1"}, Route: &Route{Prefix: "100.100.1.0/29"}}, "", ""},
		{"withdraw outside", &Request{Verb: VerbWithdrawRoute, Neighbors: []string{"192.0.2.1"}, Route: &Route{Prefix: "10.0.0.0/24"}}, RejectPrefix, "outside"},
		{"flow not length-bound", &Request{Verb: VerbAnnounceFlow, Neighbors: []string{"192.0.2.1"}, Flow: &Flow{Match: FlowMatch{Destination: "100.64.9.9/32"}, Then: FlowThen{Discard: true}}}, "", ""},
		{"flow outside", &Request{Verb: VerbAnnounceFlow, Neighbors: []string{"192.0.2.1"}, Flow: &Flow{Match: FlowMatch{Destination: "10.9.9.9/32"}, Then: FlowThen{Discard: true}}}, RejectPrefix, "outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Check(tt.req)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			var re *RejectError
			if !errors.As(err, &re) || !errors.Is(err, ErrRejected) {
				t.Fatalf("got %v, want a RejectError", err)
			}
			if re.Reason != tt.reason || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got reason %q (%v), want %q containing %q", re.Reason, err, tt.reason, tt.msg)
			}
		})
	}
}

// TestPolicyRejectReasons: every rejection carries one reason of a small
// fixed set, the label of the rejection metric.
func TestPolicyRejectReasons(t *testing.T) {
	p := lePolicy(t)
	nb := []string{"192.0.2.1"}
	ok := &Route{Prefix: "100.100.1.0/24", NextHop: "192.0.2.254"}
	tests := []struct {
		req    Request
		reason string
	}{
		{Request{Verb: VerbRouteRefresh, Neighbors: nb, Family: "ipv4 unicast"}, RejectVerb},
		{Request{Verb: "reboot", Neighbors: nb}, RejectVerb},
		{Request{Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.9"}, Route: ok}, RejectNeighbor},
		{Request{Verb: VerbAnnounceRoute, Neighbors: []string{"not-an-ip"}, Route: ok}, RejectNeighbor},
		{Request{Verb: VerbAnnounceRoute, Route: ok}, RejectNeighbor},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "10.0.0.0/24", NextHop: "192.0.2.254"}}, RejectPrefix},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.1/24", NextHop: "192.0.2.254"}}, RejectPrefix},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "bogus", NextHop: "192.0.2.254"}}, RejectPrefix},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/30", NextHop: "192.0.2.254"}}, RejectPrefixLength},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "10.0.0.1"}}, RejectNextHop},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24"}}, RejectNextHop},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "self"}}, RejectNextHop},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb, Route: &Route{Prefix: "100.100.1.0/24", NextHop: "192.0.2.254", Origin: "bgp"}}, RejectInvalid},
		{Request{Verb: VerbAnnounceRoute, Neighbors: nb}, RejectInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.reason+"/"+tt.req.Verb, func(t *testing.T) {
			_, err := p.Check(&tt.req)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := RejectReason(err); got != tt.reason {
				t.Fatalf("reason %q, want %q (%v)", got, tt.reason, err)
			}
			if !strings.HasPrefix(err.Error(), "rejected: ") {
				t.Fatalf("message %q lost its rejected: prefix", err)
			}
		})
	}
	// Wrapped, foreign or unknown reasons stay within the bounded set.
	if got := RejectReason(fmt.Errorf("apply: %w", reject(RejectRate, "rate limit exceeded"))); got != RejectRate {
		t.Errorf("wrapped rate: %q", got)
	}
	if got := RejectReason(errors.New("boom")); got != RejectInvalid {
		t.Errorf("plain error: %q", got)
	}
	if got := RejectReason(&RejectError{Reason: "free text from somewhere"}); got != RejectInvalid {
		t.Errorf("unbounded reason passed through: %q", got)
	}
}

// TestPolicyValidatePrefixes: allowed_prefixes entries are parsed strictly
// and errors name the key and index.
func TestPolicyValidatePrefixes(t *testing.T) {
	tests := []struct {
		entry string
		err   string // "" valid
	}{
		{"10.0.0.0/8", ""},
		{"10.0.0.0/8 le 32", ""},
		{"10.0.0.0/8 le 8", ""},
		{"10.0.0.1/8 le 24", ""}, // host bits are masked, as before
		{"2001:db8::/32 le 128", ""},
		{"\t10.0.0.0/8   le 24 ", ""},
		{"10.0.0.0/8 le", `want "CIDR" or "CIDR le N"`},
		{"10.0.0.0/8 le 24 25", `want "CIDR" or "CIDR le N"`},
		{"10.0.0.0/8 ge 24", `want "le" after the CIDR, not "ge"`},
		{"10.0.0.0/8 LE 24", `want "le" after the CIDR`},
		{"10.0.0.0/8 le 7", "must be a length between 8 and 32"},
		{"10.0.0.0/8 le 33", "must be a length between 8 and 32"},
		{"10.0.0.0/8 le -1", "must be a length between 8 and 32"},
		{"10.0.0.0/8 le 2x", "must be a length between 8 and 32"},
		{"0.0.0.0/0 le 0", "must be a length between 1 and 32"},
		{"2001:db8::/32 le 129", "must be a length between 32 and 128"},
		{"10.0.0.0", `invalid CIDR: netip.ParsePrefix("10.0.0.0")`},
		{"10.0.0.0/33 le 33", `invalid CIDR`},
		{"", `want "CIDR" or "CIDR le N"`},
	}
	for _, tt := range tests {
		t.Run(tt.entry, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy.AllowedPrefixes = []string{"192.0.2.0/24", tt.entry}
			err := cfg.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := NewPolicy(cfg.Policy); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if want := "exabgp.policy.allowed_prefixes[1]: "; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("got %q, want %q and %q", err, want, tt.err)
			}
			if strings.Contains(err.Error(), "allowed_prefixes[0]") {
				t.Fatalf("valid entry reported: %v", err)
			}
			if _, perr := NewPolicy(cfg.Policy); perr == nil {
				t.Fatal("NewPolicy compiled an invalid entry")
			}
		})
	}
}
