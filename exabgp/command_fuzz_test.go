package exabgp

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// FuzzRouteCommand feeds central's route command requests, as they arrive
// over NATS (JSON), through the policy and the renderer. Whatever the input,
// an accepted command is one exaBGP line whose structure the request cannot
// change: no control characters, the neighbor selector it was allowed, and
// for a flow exactly the match and then blocks bgpedge writes.
func FuzzRouteCommand(f *testing.F) {
	for _, s := range []string{
		`{"id":"1","verb":"announce-route","neighbors":["192.0.2.1"],"route":{"prefix":"100.100.1.0/24","next_hop":"192.0.2.254","origin":"igp","as_path":[65001,65002],"med":10,"local_pref":200,"communities":["65000:1"],"large_communities":["65000:1:2"],"extended_communities":["target:65000:1"]}}`,
		`{"id":"2","verb":"withdraw-route","neighbors":["192.0.2.1"],"route":{"prefix":"100.100.1.0/24"}}`,
		`{"id":"3","verb":"announce-flow","neighbors":["192.0.2.1"],"flow":{"match":{"destination":"100.100.9.9/32","source":"100.100.0.0/16","protocol":["udp"],"destination_port":["=53",">1024"]},"then":{"rate_limit":9600}}}`,
		`{"id":"4","verb":"withdraw-flow","neighbors":["2001:db8::1"],"flow":{"match":{"destination":"2001:db8::/48"},"then":{"discard":true}}}`,
		`{"id":"5","verb":"route-refresh","neighbors":["192.0.2.1"],"family":"ipv4 unicast"}`,
		`{"id":"6","verb":"announce-route","neighbors":["192.0.2.1"],"route":{"prefix":"100.100.1.0/24","next_hop":"self","communities":["1:1 ]\nannounce route 0.0.0.0/0 next-hop self"]}}`,
		`{"id":"7","verb":"announce-flow","neighbors":["192.0.2.1"],"flow":{"match":{"destination":"100.100.9.9/32","protocol":["udp; } then { discard"]},"then":{"discard":true}}}`,
		`{"id":"8","verb":"list"}`,
	} {
		f.Add([]byte(s))
	}
	p, err := NewPolicy(PolicyConfig{
		AllowedVerbs:      allVerbs,
		AllowedPrefixes:   []string{"100.100.0.0/16", "2001:db8::/32"},
		MaxPrefixLengthV4: 32, MaxPrefixLengthV6: 128,
		AllowedNeighbors: []string{"192.0.2.1", "2001:db8::1"},
		AllowedNextHops:  []string{"192.0.2.0/24", "2001:db8::/32", "self"},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req Request
		if json.Unmarshal(data, &req) != nil {
			return
		}
		c, err := p.Check(&req)
		if err != nil {
			return
		}
		line := c.Line
		if strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("control character in %q", line)
		}
		if !strings.HasPrefix(c.Body, "announce ") && !strings.HasPrefix(c.Body, "withdraw ") {
			t.Fatalf("body %q is not an announce or withdraw", c.Body)
		}
		if !slices.IsSorted(c.Neighbors) || line != withSelector(c.Neighbors, c.Body) {
			t.Fatalf("line %q is not the selector %v and the body %q", line, c.Neighbors, c.Body)
		}
		for _, n := range c.Neighbors {
			a, err := netip.ParseAddr(n)
			if err != nil || (!p.neighbors[a] && !p.neighbors[a.Unmap()]) {
				t.Fatalf("selector %q not an allowed neighbor", n)
			}
		}
		switch req.Verb {
		case VerbAnnounceFlow, VerbWithdrawFlow:
			if strings.Count(c.Body, "{") != 3 || strings.Count(c.Body, "}") != 3 ||
				strings.Count(c.Body, "match {") != 1 || strings.Count(c.Body, " then {") != 1 {
				t.Fatalf("flow %q: blocks other than bgpedge's", c.Body)
			}
		default:
			if strings.ContainsAny(c.Body, "{};") {
				t.Fatalf("%s %q holds flow syntax", req.Verb, c.Body)
			}
		}
	})
}
