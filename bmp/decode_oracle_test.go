package bmp_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
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
// order, with one decoder (so Peer Up state carries over as in production).
func decodeStreams(t testing.TB, path string, reg prometheus.Registerer) []decodedMsg {
	return decodeStreamsKeep(t, path, reg, true)
}

// decodeStreamsKeep can drop the events once checked, for the large capture.
func decodeStreamsKeep(t testing.TB, path string, reg prometheus.Registerer, keep bool) []decodedMsg {
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

// tsharkMessages runs tshark's BMP and BGP dissectors over a capture.
func tsharkMessages(t testing.TB, tshark, path string, ports []uint16) []tsharkMsg {
	t.Helper()
	msgs, err := tsharkJSON(tshark, path, ports)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// tsharkJSON is tsharkMessages for callers off the test goroutine.
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
			msgs := decodeStreamsKeep(t, f, reg, !strings.Contains(name, "100k"))
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

// tsharkExceptions lists, per capture, the Route Monitoring messages where
// tshark 4.0 is not a usable oracle, and why. Each entry is checked: the
// count of disagreeing messages must be exactly this.
var tsharkExceptions = map[string]struct {
	typesFromFraming string // message types when tshark loses the stream
	routeMismatches  int
	why              string
}{
	"stateless-with-add-path__ipv4_unicast_all.pcap": {
		typesFromFraming: strings.Repeat("3 ", 9) + strings.TrimSpace(strings.Repeat("0 ", 21)),
		routeMismatches:  21,
		why:              "crafted BMPv4 messages: tshark throws on the first Peer Up's TLVs and loses the TCP stream after 7 messages; its 21 Route Monitoring messages (BGP PDU in a v4 TLV, stateless-parsing Add-Path) are never dissected",
	},
	"huawei-ne40e-vrp8.230__daisy-23.bmp": {
		routeMismatches: 2,
		why:             "locally originated routes (empty AS_PATH) with Add-Path path ids: tshark 4.0 has no Add-Path reading for them, flags them malformed and shows neither prefix, next hop nor AS path, so nothing is left to compare; the other 115 Add-Path messages it flags agree on AS path and flags",
	},
	"vpnv4-stateless-with-withdraw__vpnv4-stateless-with-withdraw.pcap": {
		routeMismatches: 15,
		why:             "BMPv4 Route Monitoring with the BGP PDU inside a TLV: tshark 4.0 does not dissect the BGP PDU",
	},
	"path-status__ipv4_unicast_path_marking.pcap": {
		routeMismatches: 2,
		why:             "BMPv4 Route Monitoring with the BGP PDU inside a TLV (path marking): tshark 4.0 does not dissect the BGP PDU (the third message, with nothing tshark could show, matches trivially)",
	},
}

// TestDecodeAgainstTshark decodes every shared pcap and checks, for every
// Route Monitoring message, that prefixes, next hops, AS path and peer
// flags agree with tshark's BMP/BGP dissectors, and that per-type message
// counts agree with tshark's.
func TestDecodeAgainstTshark(t *testing.T) {
	tshark := testenv.Binary(t, "tshark", "tshark")
	files, _ := filepath.Glob(filepath.Join(testenv.Shared(t, "bmpdata", "pcap"), "*", "*.pcap*"))
	if len(files) == 0 {
		testenv.Missing(t, "shared pcaps", "bmpdata/pcap is empty")
	}
	// The raw stream files go through tshark too, wrapped in a pcap; the
	// 100k dump is left out (tshark's JSON of it is gigabytes).
	raw, _ := filepath.Glob(filepath.Join(testenv.Shared(t, "bmpdata", "raw"), "*.bmp"))
	var totalRM, totalAgree int
	for _, f := range append(files, raw...) {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			streams, _ := capture.Open(f)
			var ports []uint16
			for _, s := range streams {
				if !slices.Contains(ports, s.Dst.Port()) {
					ports = append(ports, s.Dst.Port())
				}
			}
			tsharkInput := f
			if !streams[0].Src.IsValid() {
				tsharkInput = filepath.Join(t.TempDir(), "stream.pcap")
				if err := os.WriteFile(tsharkInput, streamPcap(streams[0].Data), 0o600); err != nil {
					t.Fatal(err)
				}
				ports = []uint16{1790}
			}
			reg := prometheus.NewRegistry()
			ours := decodeStreams(t, f, reg)
			theirs := tsharkMessages(t, tshark, tsharkInput, ports)
			exc := tsharkExceptions[name]

			// Per-type counts.
			var oursTypes, theirTypes []string
			for _, m := range ours {
				oursTypes = append(oursTypes, strconv.Itoa(int(m.typ)))
			}
			for _, m := range theirs {
				theirTypes = append(theirTypes, m.typ)
			}
			if exc.typesFromFraming != "" {
				theirTypes = strings.Fields(exc.typesFromFraming)
			}
			slices.Sort(oursTypes)
			slices.Sort(theirTypes)
			if !slices.Equal(oursTypes, theirTypes) {
				t.Errorf("message types differ:\n ours   %v\n tshark %v", oursTypes, theirTypes)
			}
			for typ := bmp.MsgRouteMonitoring; typ <= bmp.MsgRouteMirroring; typ++ {
				want := 0
				for _, s := range oursTypes {
					if s == strconv.Itoa(int(typ)) {
						want++
					}
				}
				if got := decodedCount(t, reg, typ); got != want {
					t.Errorf("metric decoded %s = %d, want %d", typ, got, want)
				}
			}

			// Route Monitoring content: compare multisets of per-message
			// signatures (streams of multi-router captures interleave).
			// Where tshark flags a message malformed and leaves fields out
			// (it has no Add-Path heuristic for labeled and VPN families, and
			// does not read RFC 8950 IPv6 next hops of VPNv4 routes), the
			// fields it did show must still agree.
			count := map[string]int{}
			partial := map[sigMask]map[string]int{}
			var tsharkMalformed, partialAgree int
			for _, m := range theirs {
				if m.typ != "0" {
					continue
				}
				k := fmt.Sprintf("flags=%#02x %s", m.flags, m.sig)
				if m.malformed {
					tsharkMalformed++
					mask := sigMask{noPrefixes: strings.Contains(k, " prefixes= "), noNextHops: strings.Contains(k, " next_hops= ")}
					// Something must be left to compare besides the flags.
					showed := !mask.noPrefixes || !strings.HasSuffix(k, " as_path=")
					if (mask.noPrefixes || mask.noNextHops) && showed {
						if partial[mask] == nil {
							partial[mask] = map[string]int{}
						}
						partial[mask][mask.reduce(k)]++
						continue
					}
				}
				count[k]++
			}
			var rm, mismatches int
			var diffs []string
			for i, m := range ours {
				if m.typ != bmp.MsgRouteMonitoring {
					continue
				}
				rm++
				sig, failed := oursRouteSig(m)
				if failed {
					t.Logf("message %d: our decoder rejected it: %s", i+1, strings.Join(decodeErrors(ours[i:i+1]), "; "))
				}
				k := fmt.Sprintf("flags=%#02x %s", m.flags, sig)
				if count[k] > 0 {
					count[k]--
					continue
				}
				matched := false
				for _, mask := range []sigMask{{noNextHops: true}, {noPrefixes: true}, {noPrefixes: true, noNextHops: true}} {
					if partial[mask][mask.reduce(k)] > 0 {
						partial[mask][mask.reduce(k)]--
						partialAgree++
						matched = true
						break
					}
				}
				if matched {
					continue
				}
				mismatches++
				var fams []string
				for _, ev := range m.events {
					if ev.Route != nil && !slices.Contains(fams, ev.Route.Family) {
						fams = append(fams, ev.Route.Family)
					}
				}
				diffs = append(diffs, fmt.Sprintf("message %d ours:   %s (families %v)", i+1, k, fams))
			}
			pools := []map[string]int{count}
			for _, p := range partial {
				pools = append(pools, p)
			}
			for _, c := range pools {
				for k, n := range c {
					for range n {
						diffs = append(diffs, "tshark (unmatched): "+k)
					}
				}
			}
			if partialAgree > 0 {
				t.Logf("%d route monitoring messages agree on the fields tshark could show (flags, AS path, and prefixes or next hops); tshark flagged them malformed and left the others out", partialAgree)
			}
			totalRM += rm
			totalAgree += rm - mismatches
			if mismatches != exc.routeMismatches {
				t.Errorf("%d of %d route monitoring messages disagree with tshark (expected %d):\n%s", mismatches, rm, exc.routeMismatches, strings.Join(diffs, "\n"))
			} else if mismatches > 0 {
				t.Logf("%d of %d route monitoring messages not checkable against tshark: %s", mismatches, rm, exc.why)
			}
			if tsharkMalformed > 0 {
				t.Logf("tshark flagged %d route monitoring messages as malformed", tsharkMalformed)
			}
			if errs := decodeErrors(ours); len(errs) > 0 {
				t.Errorf("decode errors:\n%s", strings.Join(errs, "\n"))
			}
		})
	}
	t.Logf("route monitoring messages agreeing with tshark: %d of %d", totalAgree, totalRM)
}

// streamPcap wraps a raw BMP stream in a pcap of one TCP connection
// (192.0.2.250:40000 → 192.0.2.1:1790, Ethernet) so tshark can dissect it,
// one message per segment as cut by walkMessages (see streamsPcap).
func streamPcap(data []byte) []byte {
	msgs, _ := walkMessages(data)
	return streamsPcap([][][]byte{msgs})
}
