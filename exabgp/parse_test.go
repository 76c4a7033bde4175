package exabgp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// qaPrefix is the "1:json:" / "1:jsv4:" prefix of upstream QA expectation files.
var qaPrefix = regexp.MustCompile(`^[0-9]+:[a-z0-9]+:`)

// sampleLines returns every line of the shared exaBGP samples as exaBGP
// would write it to a process (QA harness prefixes stripped), by file.
func sampleLines(t testing.TB) map[string][][]byte {
	t.Helper()
	dir := testenv.Shared(t, "exabgp")
	out := map[string][][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name, _ := filepath.Rel(dir, p)
		// What bgpedge writes to exaBGP, and the index: not process input.
		if strings.HasSuffix(name, "commands.txt") || strings.HasSuffix(name, "INDEX.txt") || strings.HasSuffix(name, ".md") {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
		for sc.Scan() {
			line := qaPrefix.ReplaceAll(bytes.TrimSpace(sc.Bytes()), nil)
			out[name] = append(out[name], append([]byte(nil), line...))
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 50 {
		t.Fatalf("found only %d sample files under %s", len(out), dir)
	}
	return out
}

// TestEverySampleParses: every event line of every sample decodes and
// normalises; the two known-invalid 4.2.21 shapes are repaired; acks are
// command-path lines.
func TestEverySampleParses(t *testing.T) {
	files := sampleLines(t)
	var events, acks, repaired, routes int
	enc := &Encoder{AgentID: "t", Raw: true}
	for name, lines := range files {
		t.Run(name, func(t *testing.T) {
			for i, line := range lines {
				kind, ack := ClassifyLine(line)
				switch kind {
				case LineAck:
					acks++
					if ack == AckNone {
						t.Errorf("line %d: ack without result", i+1)
					}
					continue
				case LineEvent:
				default:
					continue // QA harness lines (hex, "update ipv4 unicast"), NLRI-only JSON
				}
				events++
				m, err := ParseEvent(line)
				if err != nil {
					t.Errorf("line %d: %v\n%s", i+1, err, line)
					continue
				}
				if strings.HasPrefix(name, "live-4.2.21/INVALID-JSON") && !m.Repaired {
					t.Errorf("line %d: invalid JSON sample decoded without repair", i+1)
				}
				if m.Repaired {
					repaired++
				}
				evs, err := Normalise(m)
				if err != nil {
					t.Errorf("line %d: normalise: %v\n%s", i+1, err, line)
					continue
				}
				for _, ev := range evs {
					if ev.Type == TypeRoute {
						routes++
						if ev.Route.Prefix == "" && !ev.Route.EndOfRIB {
							t.Errorf("line %d: route without prefix: %+v", i+1, ev.Route)
						}
						if ev.Route.Family == "" || ev.Peer == nil || ev.Peer.Address == "" {
							t.Errorf("line %d: route without family or peer: %+v", i+1, ev)
						}
					}
				}
				var nout int
				err = enc.Encode(record.Record{Seq: 1, Kind: record.KindExaBGP, Payload: line}, outputs(func(stream string, _, v []byte) {
					nout++
					if _, ok := Streams().Lookup(stream); !ok {
						t.Errorf("line %d: output on %q, a stream Streams() does not declare", i+1, stream)
					}
					if stream == StreamErrors {
						t.Errorf("line %d: encoder reported a decode error: %s", i+1, v)
					}
					if stream != StreamRaw && !json.Valid(v) {
						t.Errorf("line %d: invalid JSON output: %s", i+1, v)
					}
				}))
				if err != nil || nout < 2 {
					t.Errorf("line %d: encode: %v, %d outputs", i+1, err, nout)
				}
			}
		})
	}
	t.Logf("%d files, %d events (%d repaired), %d acks, %d route events", len(files), events, repaired, acks, routes)
	if events < 150 || repaired < 4 || acks < 4 || routes < 200 {
		t.Errorf("too few: %d events, %d repaired, %d acks, %d routes", events, repaired, acks, routes)
	}
}

func u32(v uint32) *uint32 { return &v }

func TestNormaliseFields(t *testing.T) {
	ts := time.Unix(1795238477, 321100500).UTC()
	tests := []struct {
		name string
		line string
		want []record.Event
	}{
		{
			name: "4.2 ipv4 unicast all attributes",
			line: `{ "exabgp": "4.0.1", "time": 1795238477.3211005, "host" : "vm", "pid" : 25784, "ppid" : 25782, "counter": 8, "type": "update", "neighbor": { "address": { "local": "127.0.0.5", "peer": "127.0.0.2" }, "asn": { "local": 65001, "peer": 65001 } , "direction": "receive", "message": { "update": { "attribute": { "origin": "igp", "as-path": [ 65002 ], "confederation-path": [], "med": 20, "local-preference": 100, "community": [ [ 65002, 1 ], [ 65535, 65281 ] ], "extended-community": [ { "value": 842131417596004, "string": "target:65002:100" } ], "large-community": [ [ 65002, 1 , 1 ] ] }, "announce": { "ipv4 unicast": { "192.0.2.254": [ { "nlri": "100.64.20.0/24" } ] } } } } } }`,
			want: []record.Event{{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.5", Timestamp: &ts,
				Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Route: &record.Route{Action: "announce", Prefix: "100.64.20.0/24", AFI: 1, SAFI: 1, Family: "ipv4-unicast", NextHop: "192.0.2.254",
					Origin: "igp", ASPath: []uint32{65002}, MED: u32(20), LocalPref: u32(100),
					Communities: []string{"65002:1", "65535:65281"}, ExtCommunities: []string{"target:65002:100"}, LargeCommunities: []string{"65002:1:1"},
					ExaBGP: map[string]json.RawMessage{"extended-community": json.RawMessage(`[{"value":842131417596004,"string":"target:65002:100"}]`)},
					RIB:    "adj-rib-in"}}},
		},
		{
			name: "5.0 as-path object, path-information, ipv6 peer",
			line: `{"exabgp":"6.0.0","type":"update","neighbor":{"address":{"local":"::1","peer":"2001:db8::1"},"asn":{"local":65533,"peer":65000},"router-id":"10.0.0.2","direction":"in","message":{"update":{"attribute":{"origin":"igp","as-path":{"0":{"element":"as-sequence","value":[65533,1]},"1":{"element":"as-set","value":[7,8]}}},"announce":{"ipv4 unicast":{"10.0.1.254":[{"nlri":"10.0.0.0/24","path-information":"0.0.0.5"}]}}}}}}`,
			want: []record.Event{{V: 1, Type: "route", Source: "exabgp", Router: "::1",
				Peer: &record.Peer{Address: "2001:db8::1", AS: 65000, Type: "exabgp", IPv6: true},
				Route: &record.Route{Action: "announce", Prefix: "10.0.0.0/24", PathID: 5, AFI: 1, SAFI: 1, Family: "ipv4-unicast", NextHop: "10.0.1.254",
					Origin: "igp", ASPath: []uint32{65533, 1, 7, 8},
					ASPathSegments: []record.ASPathSegment{{Type: "sequence", ASNs: []uint32{65533, 1}}, {Type: "set", ASNs: []uint32{7, 8}}},
					RIB:            "adj-rib-in"}}},
		},
		{
			name: "compact mode and withdraw first",
			line: `{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"receive","message":{"update":{"attribute":{"origin":"egp"},"announce":{"ipv4 unicast":{"192.0.2.1":["10.0.0.0/8","10.1.0.0/16"]}},"withdraw":{"ipv6 unicast":["2001:db8::/32"]}}}}}`,
			want: []record.Event{
				{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
					Route: &record.Route{Action: "withdraw", Prefix: "2001:db8::/32", AFI: 2, SAFI: 1, Family: "ipv6-unicast", RIB: "adj-rib-in"}},
				{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
					Route: &record.Route{Action: "announce", Prefix: "10.0.0.0/8", AFI: 1, SAFI: 1, Family: "ipv4-unicast", NextHop: "192.0.2.1", Origin: "egp", RIB: "adj-rib-in"}},
				{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
					Route: &record.Route{Action: "announce", Prefix: "10.1.0.0/16", AFI: 1, SAFI: 1, Family: "ipv4-unicast", NextHop: "192.0.2.1", Origin: "egp", RIB: "adj-rib-in"}},
			},
		},
		{
			name: "end of rib",
			line: `{ "exabgp": "4.0.1", "type": "update", "neighbor": { "address": { "local": "127.0.0.5", "peer": "127.0.0.2" }, "asn": { "local": 65001, "peer": 65001 } , "direction": "receive", "message": { "eor": { "afi" : "ipv6", "safi" : "unicast" } } } }`,
			want: []record.Event{{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.5", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Route: &record.Route{Action: "withdraw", EndOfRIB: true, AFI: 2, SAFI: 1, Family: "ipv6-unicast", RIB: "adj-rib-in"}}},
		},
		{
			name: "vpn label and rd",
			line: `{"exabgp":"6.0.0","type":"update","neighbor":{"address":{"local":"127.0.0.1","peer":"127.0.0.1"},"asn":{"local":65000,"peer":65000},"direction":"in","message":{"update":{"attribute":{"origin":"igp","local-preference":100},"announce":{"ipv4 mpls-vpn":{"200.10.0.101":[{"nlri":"10.0.0.0/25","label":[[1000,16001]],"rd":"65000:1"}]}}}}}}`,
			want: []record.Event{{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.1", Peer: &record.Peer{Address: "127.0.0.1", AS: 65000, Type: "exabgp"},
				Route: &record.Route{Action: "announce", Prefix: "10.0.0.0/25", AFI: 1, SAFI: 128, Family: "vpnv4-unicast", NextHop: "200.10.0.101", Origin: "igp", LocalPref: u32(100), Labels: []uint32{1000}, RD: "65000:1", RIB: "adj-rib-in"}}},
		},
		{
			name: "flowspec rule as prefix, generic attribute",
			line: `{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"receive","message":{"update":{"attribute":{"origin":"incomplete","attribute-0x99-0x60":"0xBEEF"},"announce":{"ipv4 flow":{"no-nexthop":[{"destination-ipv4":["203.0.113.0/24"],"string":"flow destination-ipv4 203.0.113.0/24"}]}}}}}}`,
			want: []record.Event{{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Route: &record.Route{Action: "announce", Prefix: "flow destination-ipv4 203.0.113.0/24", AFI: 1, SAFI: 133, Family: "ipv4-flowspec", Origin: "incomplete",
					Attributes: []record.OtherAttribute{{Type: 0x99, Flags: 0x60, Value: []byte{0xbe, 0xef}}},
					ExaBGP:     map[string]json.RawMessage{"nlri": json.RawMessage(`{"destination-ipv4":["203.0.113.0/24"],"string":"flow destination-ipv4 203.0.113.0/24"}`)},
					RIB:        "adj-rib-in"}}},
		},
		{
			name: "state down with reason",
			line: `{ "exabgp": "4.0.1", "type": "state", "neighbor": { "address": { "local": "127.0.0.3", "peer": "127.0.0.2" }, "asn": { "local": 65002, "peer": 65001 } , "state": "down", "reason": "peer reset" } }`,
			want: []record.Event{{V: 1, Type: "state", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Data: sessionData{LocalAS: 65002, State: "down", Reason: "peer reset"}}},
		},
		{
			name: "open gives the peer's bgp id",
			line: `{ "exabgp": "4.0.1", "type": "open", "neighbor": { "address": { "local": "127.0.0.3", "peer": "127.0.0.2" }, "asn": { "local": 65002, "peer": 65001 } , "direction": "receive", "open": { "version": 4, "router_id": "127.0.0.2" } } }`,
			want: []record.Event{{V: 1, Type: "open", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp", BGPID: "127.0.0.2"},
				Data: sessionData{Direction: "receive", LocalAS: 65002, Open: json.RawMessage(`{ "version": 4, "router_id": "127.0.0.2" }`)}}},
		},
		{
			name: "sent update is adj-rib-out",
			line: `{"exabgp":"5.0.0","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"out","message":{"update":{"withdraw":{"ipv4 unicast":[{"nlri":"10.0.0.0/8"}]}}}}}`,
			want: []record.Event{{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Route: &record.Route{Action: "withdraw", Prefix: "10.0.0.0/8", AFI: 1, SAFI: 1, Family: "ipv4-unicast", RIB: "adj-rib-out"}}},
		},
		{
			name: "fsm",
			line: `{"exabgp":"5.0.0","type":"fsm","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"router-id":"127.0.0.3","state":"established"}}`,
			want: []record.Event{{V: 1, Type: "fsm", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Data: sessionData{LocalAS: 65002, RouterID: "127.0.0.3", State: "established"}}},
		},
		{
			name: "signal",
			line: `{"exabgp":"5.0.0","type":"signal","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"code":1,"name":"SIGHUP"}}`,
			want: []record.Event{{V: 1, Type: "signal", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Data: sessionData{LocalAS: 65002, Code: json.RawMessage(`1`), Name: "SIGHUP"}}},
		},
		{
			name: "4.2 confederation and set",
			line: `{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"receive","message":{"update":{"attribute":{"as-path":[1,2],"as-set":[3],"confederation-path":[64512],"atomic-aggregate":true,"aggregator":"( 65001:192.0.2.1 )","originator-id":"192.0.2.9","cluster-list":["192.0.2.10"]},"announce":{"ipv4 unicast":{"null":[{"nlri":"10.0.0.0/8"}]}}}}}}`,
			want: []record.Event{{V: 1, Type: "route", Source: "exabgp", Router: "127.0.0.3", Peer: &record.Peer{Address: "127.0.0.2", AS: 65001, Type: "exabgp"},
				Route: &record.Route{Action: "announce", Prefix: "10.0.0.0/8", AFI: 1, SAFI: 1, Family: "ipv4-unicast", ASPath: []uint32{1, 2, 3},
					ASPathSegments:  []record.ASPathSegment{{Type: "confed-sequence", ASNs: []uint32{64512}}, {Type: "sequence", ASNs: []uint32{1, 2}}, {Type: "set", ASNs: []uint32{3}}},
					AtomicAggregate: true, Aggregator: "65001:192.0.2.1", OriginatorID: "192.0.2.9", ClusterList: []string{"192.0.2.10"}, RIB: "adj-rib-in"}}},
		},
		{
			name: "exabgp shutdown",
			line: `{ "exabgp": "4.0.1", "time": 1795238477.3211005, "host" : "vm", "pid" : 17345, "ppid" : 1, "type": "notification", "notification": "shutdown" }`,
			want: []record.Event{{V: 1, Type: TypeShutdown, Source: "exabgp", Timestamp: &ts, Data: sessionData{Host: "vm", PID: 17345, Notification: json.RawMessage(`"shutdown"`)}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseEvent([]byte(tt.line))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Normalise(m)
			if err != nil {
				t.Fatal(err)
			}
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(tt.want)
			if !bytes.Equal(gb, wb) {
				t.Errorf("got  %s\nwant %s", gb, wb)
			}
		})
	}
}

func TestClassifyLine(t *testing.T) {
	tests := []struct {
		line string
		kind LineKind
		ack  Ack
	}{
		{"", LineEmpty, AckNone},
		{"done", LineAck, AckDone},
		{"error\r", LineAck, AckError},
		{"shutdown", LineAck, AckShutdown},
		{`{ "answer": "done", "message": "command completed" }`, LineAck, AckDone},
		{`{ "answer": "error", "message": "x" }`, LineAck, AckError},
		{`{ "answer": "error", "message": "neighbor not done yet" }`, LineAck, AckError},
		{`{ "answer": "shutdown" }`, LineAck, AckShutdown},
		{`{ "answer": "done" `, LineAck, AckError}, // torn: not taken for success
		{"exabgp 4.2.21", LineOutput, AckNone},
		{`{ "ls-nlri-type": "bgpls-link" }`, LineOutput, AckNone},
		{`{ "exabgp": "4.0.1", "type": "keepalive" }`, LineEvent, AckNone},
		{`{"exabgp":"6.0.0","type":"update"}`, LineEvent, AckNone},
	}
	for _, tt := range tests {
		k, a := ClassifyLine([]byte(tt.line))
		if k != tt.kind || a != tt.ack {
			t.Errorf("%q: got %v/%v, want %v/%v", tt.line, k, a, tt.kind, tt.ack)
		}
	}
}

func TestRepairAndDecodeError(t *testing.T) {
	// 4.2's operational counter prints the router-id unquoted.
	line := `{ "exabgp": "4.0.1", "type": "operational", "neighbor": { "address": { "local": "127.0.0.7", "peer": "127.0.0.8" }, "asn": { "local": 65007, "peer": 65008 } , "direction": "receive", "operational": { "name": ""RPCP"", "afi": ""ipv4"", "safi": ""unicast"", "router-id": 1.2.3.4, "sequence": 1, "counter": 2 } } }`
	m, err := ParseEvent([]byte(line))
	if err != nil || !m.Repaired {
		t.Fatalf("not repaired: %v", err)
	}
	var op map[string]any
	if err := json.Unmarshal(m.Neighbor.Operational, &op); err != nil || op["router-id"] != "1.2.3.4" || op["afi"] != "ipv4" {
		t.Fatalf("repaired operational = %s (%v)", m.Neighbor.Operational, err)
	}

	// A line beyond repair is kept raw and reported on exabgp.errors.
	enc := &Encoder{AgentID: "a1", Raw: true}
	bad := []byte(`{ "exabgp": "4.0.1", "type": "update", "neighbor": { "address": { "peer": "127.0.0.2" `)
	var got []string
	err = enc.Encode(record.Record{Seq: 9, Kind: record.KindExaBGP, Key: []byte("127.0.0.2"), Payload: bad}, outputs(func(s string, k, v []byte) {
		got = append(got, s+" "+string(k)+" "+string(v))
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "exabgp.raw 127.0.0.2 "+string(bad) || !strings.HasPrefix(got[1], `exabgp.errors 127.0.0.2 {"v":1,"type":"decode-error","id":"a1:9:1"`) {
		t.Fatalf("outputs: %q", got)
	}
}

// TestExtendedCommunityPrecision: values above 2^53 survive unchanged.
func TestExtendedCommunityPrecision(t *testing.T) {
	line := `{"exabgp":"6.0.0","type":"update","neighbor":{"address":{"local":"127.0.0.1","peer":"127.0.0.1"},"asn":{"local":1,"peer":1},"direction":"in","message":{"update":{"attribute":{"extended-community":[{"value":9226749737724149761}]},"announce":{"ipv4 unicast":{"1.1.1.1":[{"nlri":"10.0.0.0/8"}]}}}}}}`
	var got []byte
	enc := &Encoder{AgentID: "a"}
	if err := enc.Encode(record.Record{Seq: 3, Kind: record.KindExaBGP, Payload: []byte(line)}, outputs(func(_ string, _, v []byte) { got = v })); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, []byte(`"extended_communities":["9226749737724149761"]`)) || !bytes.Contains(got, []byte(`"value":9226749737724149761`)) {
		t.Fatalf("precision lost: %s", got)
	}
	if !bytes.Contains(got, []byte(`"id":"a:3"`)) {
		t.Fatalf("single output must have no index: %s", got)
	}
}

func TestEncoderOrderAndKeys(t *testing.T) {
	line := `{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"receive","message":{"update":{"announce":{"ipv4 unicast":{"192.0.2.1":["10.0.0.0/8","10.1.0.0/16"]}}}}}}`
	enc := &Encoder{AgentID: "edge1", Raw: true}
	var got []string
	for range 3 {
		got = got[:0]
		err := enc.Encode(record.Record{Seq: 42, Kind: record.KindExaBGP, Key: []byte("127.0.0.2"), Payload: []byte(line)}, outputs(func(s string, k, v []byte) {
			var ev record.Event
			id := ""
			if s != StreamRaw {
				if err := json.Unmarshal(v, &ev); err != nil {
					t.Fatal(err)
				}
				id = ev.ID
			}
			got = append(got, s+"|"+string(k)+"|"+id)
		}))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"exabgp.raw|127.0.0.2|", "exabgp.route|127.0.0.2|ipv4-unicast|10.0.0.0/8|edge1:42:1", "exabgp.route|127.0.0.2|ipv4-unicast|10.1.0.0/16|edge1:42:2"}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("got %q", got)
		}
	}
	if err := enc.Encode(record.Record{Kind: record.KindBMP}, outputs(func(string, []byte, []byte) {})); err == nil {
		t.Fatal("expected ErrWrongKind")
	}
}

func FuzzParseLine(f *testing.F) {
	for _, lines := range sampleLines(f) {
		for _, l := range lines {
			f.Add(l)
		}
	}
	// Packets-only updates (hex, no parsed form), so the fuzzer mutates
	// UPDATE bytes too, and a negotiated event with Add-Path and 2-byte AS.
	for _, body := range []string{
		"0x0000003D4001010040020E02030000FDE90000FDF20000FDF380040400000032C00808FDE90064FFFFFF01C0200C0000FDE900000001000000024003047F00000218C00002",
		"0x0000002C4001010240020602010000FDE9800E1C0002011020010DB8000000000000000000000002003020010DB80001",
		"0x0000002C4001010240020602010000FDE9800E1100018500000B0118CB0071038106058150C010088006000000000000",
		"0x000418C000020000", "0x00000000", "0x00000006800F03000201",
	} {
		f.Add([]byte(`{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"receive","message":{"category":2,"header":"","body":"` + body + `"}}}`))
	}
	negotiated := `{"exabgp":"4.0.1","type":"negotiated","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"negotiated":{"asn4":false,"add_path":{"send":[],"receive":["ipv4 unicast","ipv6 unicast"]}}}}`
	f.Add([]byte(negotiated))
	// One input may hold several lines, read by one session's Normaliser:
	// what a negotiated line leaves behind shapes the updates after it, and
	// a crash found that way reproduces from the saved input alone.
	f.Add([]byte(negotiated + "\n" + `{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"receive","message":{"category":2,"header":"","body":"0x0000002C4001010240020602010000FDE9800E1C0002011020010DB8000000000000000000000002003020010DB80001"}}}`))
	enc := &Encoder{AgentID: "f", Raw: true}
	f.Fuzz(func(t *testing.T, input []byte) {
		var z Normaliser
		for line := range bytes.SplitSeq(input, []byte("\n")) {
			fuzzLine(t, enc, &z, line)
		}
	})
}

func fuzzLine(t *testing.T, enc *Encoder, z *Normaliser, line []byte) {
	kind, _ := ClassifyLine(line)
	_ = peerOf(line)
	_, _ = stateUpPeer(line)
	if m, err := ParseEvent(line); err == nil {
		if _, err := Normalise(m); err != nil {
			_ = err // a decode error is a valid outcome; panics are not
		}
		evs, err := z.Normalise(m)
		if err == nil {
			if _, err := json.Marshal(evs); err != nil {
				t.Fatalf("events do not marshal: %v", err)
			}
		}
	}
	n := 0
	err := enc.Encode(record.Record{Seq: 1, Kind: record.KindExaBGP, Payload: line}, outputs(func(s string, _, v []byte) {
		n++
		if s != StreamRaw && !json.Valid(v) {
			t.Fatalf("invalid JSON on %s: %q", s, v)
		}
	}))
	if err != nil || n < 2 {
		t.Fatalf("encode: %v (%d outputs, kind %v)", err, n, kind)
	}
}

// TestEncoderDecodeErrorReasons: a line that is not exaBGP's JSON and a raw
// UPDATE that does not decode are counted apart.
func TestEncoderDecodeErrorReasons(t *testing.T) {
	enc := &Encoder{AgentID: "a"}
	emit := outputs(func(string, []byte, []byte) {})
	badUpdate := `{"exabgp":"4.0.1","type":"update","neighbor":{"address":{"local":"127.0.0.3","peer":"127.0.0.2"},"asn":{"local":65002,"peer":65001},"direction":"receive","message":{"category":2,"header":"","body":"0x00FF18C000020000"}}}`
	for i, line := range []string{`not json`, `{"exabgp":`, badUpdate} {
		if err := enc.Encode(record.Record{Seq: uint64(i + 1), Kind: record.KindExaBGP, Payload: []byte(line)}, emit); err != nil {
			t.Fatal(err)
		}
	}
	if lines, updates := enc.DecodeErrors(); lines != 2 || updates != 1 {
		t.Fatalf("decode errors: %d lines, %d updates; want 2 and 1", lines, updates)
	}
}

// outputs adapts a test's (stream, key, value) callback to the encoder's emit.
func outputs(f func(stream string, key, value []byte)) func(record.Output) {
	return func(o record.Output) { f(o.Stream, o.Key, o.Value) }
}
