package bmp_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// decodedMsg is what one BMP message decoded to.
type decodedMsg struct {
	typ    bmp.MsgType
	flags  uint8
	events []record.Event
}

// decodeStreams frames and decodes every stream of a capture file, in
// order, with one decoder (so Peer Up state carries over as in production);
// without keep it drops the events once checked, for the large capture.
func decodeStreams(t testing.TB, path string, reg prometheus.Registerer, keep bool) []decodedMsg {
	t.Helper()
	streams, err := capture.Open(path)
	if err != nil && len(streams) == 0 {
		t.Fatalf("%s: %v", path, err)
	}
	d, err := bmp.NewDecoder(bmp.DecoderOptions{StateDir: t.TempDir(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var out []decodedMsg
	var seq uint64
	limit := -1
	if !keep && raceEnabled {
		limit = raceMessageLimit
	}
	for _, s := range streams {
		src := s.Src.String()
		if !s.Src.IsValid() {
			src = "192.0.2.250:40000"
		}
		fr := bmp.NewFramer(bytes.NewReader(s.Data), bmp.MaxMessageBytesLimit, 0)
		for limit < 0 || int(seq) < limit {
			m, err := fr.Next()
			if err != nil {
				var fe *bmp.FrameError
				if errors.As(err, &fe) && fe.Reason == bmp.ReasonTruncated {
					break // the capture ends inside a message (counted by tshark neither)
				}
				if err != io.EOF {
					t.Fatalf("%s: framing: %v", path, err)
				}
				break
			}
			seq++
			dm := decodedMsg{typ: bmp.MsgType(m[5])}
			if len(m) > 7 && dm.typ.HasPerPeerHeader() {
				dm.flags = m[7]
			}
			rec := record.Record{Seq: seq, Kind: record.KindBMP, Source: src, Payload: bytes.Clone(m)}
			if err := d.Decode(rec, func(ev record.Event) { dm.events = append(dm.events, ev) }); err != nil {
				t.Fatalf("%s: decode: %v", path, err)
			}
			if len(dm.events) == 0 {
				t.Errorf("%s: message %d (%s) produced no event", path, seq, dm.typ)
			}
			if !keep {
				for _, ev := range dm.events {
					if ev.Type == bmp.EventDecodeError {
						t.Errorf("%s: message %d: decode error %+v", path, seq, ev.Data)
					}
				}
				dm.events = nil
			}
			out = append(out, dm)
		}
	}
	return out
}

// ---- tshark side ----

// jnode is a JSON value with object key order kept (tshark's output
// order is the wire order, and AS paths are ordered).
type jnode struct {
	keys []string
	vals []*jnode
	arr  []*jnode
	str  string
	kind byte // 'o', 'a', 's'
}

func parseJSON(dec *json.Decoder) (*jnode, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			n := &jnode{kind: 'o'}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				c, err := parseJSON(dec)
				if err != nil {
					return nil, err
				}
				n.keys, n.vals = append(n.keys, kt.(string)), append(n.vals, c)
			}
			_, err = dec.Token()
			return n, err
		case '[':
			n := &jnode{kind: 'a'}
			for dec.More() {
				c, err := parseJSON(dec)
				if err != nil {
					return nil, err
				}
				n.arr = append(n.arr, c)
			}
			_, err = dec.Token()
			return n, err
		}
	case string:
		return &jnode{kind: 's', str: v}, nil
	}
	return &jnode{kind: 's', str: fmt.Sprint(tok)}, nil
}

func (n *jnode) get(k string) *jnode {
	if n == nil || n.kind != 'o' {
		return nil
	}
	for i, key := range n.keys {
		if key == k {
			return n.vals[i]
		}
	}
	return nil
}

// items flattens "one object or a list of them" (--no-duplicate-keys).
func (n *jnode) items() []*jnode {
	if n == nil {
		return nil
	}
	if n.kind == 'a' {
		return n.arr
	}
	return []*jnode{n}
}

// walk visits every string leaf with its key.
func (n *jnode) walk(fn func(key, val string, parent *jnode)) {
	var rec func(*jnode, string, *jnode)
	rec = func(x *jnode, key string, parent *jnode) {
		switch x.kind {
		case 'o':
			for i, k := range x.keys {
				rec(x.vals[i], k, x)
			}
		case 'a':
			for _, c := range x.arr {
				rec(c, key, parent)
			}
		default:
			fn(key, x.str, parent)
		}
	}
	rec(n, "", nil)
}

type tsharkMsg struct {
	typ       string
	flags     uint8
	malformed bool
	sig       string
}

var tsharkPrefixKeys = map[string]bool{
	"bgp.nlri_prefix": true, "bgp.withdrawn_prefix": true,
	"bgp.mp_reach_nlri_ipv4_prefix": true, "bgp.mp_unreach_nlri_ipv4_prefix": true,
	"bgp.mp_reach_nlri_ipv6_prefix": true, "bgp.mp_unreach_nlri_ipv6_prefix": true,
}

// tsharkJSON runs tshark's BMP and BGP dissectors over a capture; it does
// not touch the test, so it can run off the test goroutine.
func tsharkJSON(tshark, path string, ports []uint16) ([]tsharkMsg, error) {
	args := []string{"-r", path}
	for _, p := range ports {
		args = append(args, "-d", "tcp.port=="+strconv.Itoa(int(p))+",bmp")
	}
	args = append(args, "-n", "-T", "json", "--no-duplicate-keys")
	out, err := exec.Command(tshark, args...).Output()
	if err != nil {
		return nil, fmt.Errorf("tshark %v: %w", args, err)
	}
	root, err := parseJSON(json.NewDecoder(bytes.NewReader(out)))
	if err != nil {
		return nil, fmt.Errorf("tshark json of %s: %w", path, err)
	}
	var msgs []tsharkMsg
	for _, pkt := range root.items() {
		layers := pkt.get("_source").get("layers")
		for _, m := range layers.get("bmp").items() {
			tm := tsharkMsg{typ: m.get("bmp.type").str}
			if fl := m.get("bmp.peer.header").get("bmp.peer.flags"); fl != nil {
				v, _ := strconv.ParseUint(strings.TrimPrefix(fl.str, "0x"), 16, 8)
				tm.flags = uint8(v)
			}
			if tm.typ == "0" {
				tm.sig, tm.malformed = tsharkRouteSig(m)
			}
			msgs = append(msgs, tm)
		}
	}
	return msgs, nil
}

// tsharkPrefix writes a prefix tshark showed as address/length. tshark's
// bgp.prefix_length is the NLRI's length field, which also counts the
// label stack (24 bits a label) and the route distinguisher (64 bits).
func tsharkPrefix(addr string, parent *jnode) string {
	l := parent.get("bgp.prefix_length")
	if l == nil {
		return addr + "/?"
	}
	n, err := strconv.Atoi(l.str)
	if err != nil {
		return addr + "/" + l.str
	}
	if ls := parent.get("bgp.label_stack"); ls != nil {
		labels := 0
		for _, s := range ls.items() {
			for _, f := range strings.Fields(s.str) {
				if _, err := strconv.Atoi(f); err == nil {
					labels++
				}
			}
		}
		n -= 24 * max(labels, 1)
	}
	if parent.get("bgp.rd") != nil {
		n -= 64
	}
	return addr + "/" + strconv.Itoa(n)
}

// tsharkRouteSig summarises a Route Monitoring message as tshark sees it.
func tsharkRouteSig(m *jnode) (string, bool) {
	var (
		prefixes, nextHops []string
		asPath             []string
		malformed          bool
		classicNH          string
		classicNLRI        bool
	)
	bgpNode := m.get("bgp")
	if bgpNode == nil {
		return "no-bgp", true
	}
	m.walk(func(k, v string, _ *jnode) {
		if k == "_ws.malformed" || strings.HasPrefix(k, "_ws.expert") || k == "bgp.prefix_length.invalid" {
			malformed = true
		}
	})
	for _, attr := range bgpNode.get("bgp.update.path_attributes").get("bgp.update.path_attribute").items() {
		switch attr.get("bgp.update.path_attribute.type_code").str {
		case "2":
			attr.walk(func(k, v string, _ *jnode) {
				if k == "bgp.update.path_attribute.as_path_segment.as4" || k == "bgp.update.path_attribute.as_path_segment.as2" {
					asPath = append(asPath, v)
				}
			})
		case "3":
			classicNH = attr.get("bgp.update.path_attribute.next_hop").str
		case "14":
			var n int
			attr.walk(func(k, v string, parent *jnode) {
				switch {
				case tsharkPrefixKeys[k]:
					prefixes = append(prefixes, tsharkPrefix(v, parent))
					n++
				case k == "bgp.evpn.nlri.rt" || k == "bgp.vplsad.rd" || k == "bgp.label_stack":
					n++ // routes tshark 4.0 may show without a usable prefix (VPNv6, EVPN, VPLS)
				}
			})
			if n > 0 {
				attr.walk(func(k, v string, _ *jnode) {
					if k == "bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv4" || k == "bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv6" {
						nextHops = append(nextHops, v)
					}
				})
			}
		case "15":
			attr.walk(func(k, v string, parent *jnode) {
				if tsharkPrefixKeys[k] {
					prefixes = append(prefixes, tsharkPrefix(v, parent))
				}
			})
		}
	}
	for _, k := range []string{"bgp.update.nlri", "bgp.update.withdrawn_routes"} {
		bgpNode.get(k).items()
		if n := bgpNode.get(k); n != nil {
			n.walk(func(k, v string, parent *jnode) {
				if tsharkPrefixKeys[k] {
					prefixes = append(prefixes, tsharkPrefix(v, parent))
					if k == "bgp.nlri_prefix" {
						classicNLRI = true
					}
				}
			})
		}
	}
	if classicNLRI && classicNH != "" {
		nextHops = append(nextHops, classicNH)
	}
	return routeSig(prefixes, nextHops, asPath), malformed
}

// sigMask leaves out the signature fields tshark did not show.
type sigMask struct{ noPrefixes, noNextHops bool }

func (m sigMask) reduce(sig string) string {
	p, n, a := strings.Index(sig, " prefixes="), strings.Index(sig, " next_hops="), strings.Index(sig, " as_path=")
	if p < 0 || n < p || a < n {
		return sig
	}
	out := sig[:p]
	if !m.noPrefixes {
		out += sig[p:n]
	}
	if !m.noNextHops {
		out += sig[n:a]
	}
	return out + sig[a:]
}

func routeSig(prefixes, nextHops, asPath []string) string {
	sort.Strings(prefixes)
	nh := slices.Compact(slices.Sorted(slices.Values(nextHops)))
	return "prefixes=" + strings.Join(prefixes, ",") + " next_hops=" + strings.Join(nh, ",") + " as_path=" + strings.Join(asPath, " ")
}

// oursRouteSig summarises our decoding of a Route Monitoring message the
// way tshark can show it: prefixes (address/length) of the IP families except
// VPNv6 (tshark 4.0 prints a format string instead of VPNv6 prefixes).
func oursRouteSig(dm decodedMsg) (string, bool) {
	var prefixes, nextHops, asPath []string
	for _, ev := range dm.events {
		if ev.Type == bmp.EventDecodeError && ev.Data.(*bmp.DecodeError).Reason != bmp.ErrReasonAttribute {
			return "decode-error", true
		}
		if ev.Type != bmp.EventRoute || ev.Route.EndOfRIB {
			continue
		}
		r := ev.Route
		if asPath == nil {
			for _, a := range r.ASPath {
				asPath = append(asPath, strconv.FormatUint(uint64(a), 10))
			}
			if asPath == nil {
				asPath = []string{}
			}
		}
		if r.Action == "announce" && r.NextHop != "" {
			nextHops = append(nextHops, r.NextHop)
		}
		if len(r.NLRI) > 0 || r.Family == "vpnv6-unicast" || r.Family == "vpnv6-multicast" {
			continue
		}
		if p, err := netip.ParsePrefix(r.Prefix); err == nil {
			prefixes = append(prefixes, p.Addr().String()+"/"+strconv.Itoa(p.Bits()))
		}
	}
	return routeSig(prefixes, nextHops, asPath), false
}

// raceMessageLimit is how much of the 100k capture runs under -race.
const raceMessageLimit = 20000

// rawCounts are the message counts of the raw stream files, from
// bmpdata/PROVENANCE.md (counted there with an independent framing parser).
var rawCounts = map[string]map[bmp.MsgType]int{
	"juniper-mx204-junos24__daisy-19.bmp":         {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 12, bmp.MsgRouteMonitoring: 536, bmp.MsgStatistics: 252},
	"huawei-ne40e-vrp8.230__daisy-23.bmp":         {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 12, bmp.MsgRouteMonitoring: 315, bmp.MsgStatistics: 228},
	"frr-8.0.1-6wind__daisy-58.bmp":               {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 5, bmp.MsgRouteMonitoring: 372, bmp.MsgStatistics: 88},
	"cisco-iosxr-24.4.1__daisy-90.bmp":            {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 37, bmp.MsgRouteMonitoring: 1245},
	"cisco-iosxr-7.10.2__daisy-44.bmp":            {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 17, bmp.MsgRouteMonitoring: 348, bmp.MsgStatistics: 68},
	"juniper-vmx-junos21__bbmp2kafka-example.bmp": {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 1, bmp.MsgStatistics: 1, bmp.MsgRouteMonitoring: 4},
	"gobgp-3.10.0-loopback.bmp":                   {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 1, bmp.MsgRouteMonitoring: 26, bmp.MsgStatistics: 3, bmp.MsgPeerDown: 1, bmp.MsgTermination: 1},
	"gobgp-3.10-all-dump-100k.bmp.gz":             {bmp.MsgInitiation: 1, bmp.MsgPeerUp: 1, bmp.MsgRouteMonitoring: 300003, bmp.MsgTermination: 1},
}

func decodedCount(t testing.TB, reg *prometheus.Registry, typ bmp.MsgType) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bgpedge_bmp_decoded_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" && l.GetValue() == typ.String() {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return 0
}

func decodeErrors(msgs []decodedMsg) []string {
	var out []string
	for i, dm := range msgs {
		for _, ev := range dm.events {
			if ev.Type == bmp.EventDecodeError {
				de := ev.Data.(*bmp.DecodeError)
				out = append(out, fmt.Sprintf("message %d (%s): %s: %s", i+1, dm.typ, de.Reason, de.Error))
			}
		}
	}
	return out
}

// TestDecodeRawCaptures decodes every raw stream file: per-type counts match
// PROVENANCE.md and nothing fails to decode. The 100k file runs in -short
// mode too but only counts (no per-event checks) to keep -race time sane.
func TestDecodeRawCaptures(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(testenv.Shared(t, "bmpdata", "raw"), "*.bmp*"))
	if len(files) != len(rawCounts) {
		t.Errorf("found %d raw captures, expected the %d of PROVENANCE.md", len(files), len(rawCounts))
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			msgs := decodeStreams(t, f, reg, !strings.Contains(name, "100k"))
			want := rawCounts[name]
			if strings.Contains(name, "100k") && raceEnabled {
				// A prefix only (see raceEnabled): Initiation, Peer Up, then Route Monitoring.
				want = map[bmp.MsgType]int{bmp.MsgInitiation: 1, bmp.MsgPeerUp: 1, bmp.MsgRouteMonitoring: raceMessageLimit - 2}
				t.Logf("race detector on: decoding the first %d of 300,006 messages", raceMessageLimit)
			}
			for typ := bmp.MsgRouteMonitoring; typ <= bmp.MsgRouteMirroring; typ++ {
				if got := decodedCount(t, reg, typ); got != want[typ] {
					t.Errorf("%s: decoded %d, want %d", typ, got, want[typ])
				}
			}
			if errs := decodeErrors(msgs); len(errs) > 0 {
				t.Errorf("%d decode errors:\n%s", len(errs), strings.Join(errs, "\n"))
			}
			if got := testutil.ToFloat64(counterOf(t, reg, "bgpedge_bmp_decode_errors_total")); got != 0 {
				t.Errorf("bgpedge_bmp_decode_errors_total = %v, want 0", got)
			}
		})
	}
}

// counterOf sums a counter family from a registry into a collector for testutil.
func counterOf(t testing.TB, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "sum"})
	c.Add(sum)
	return c
}
