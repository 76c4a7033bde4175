package exabgp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/bgpedge/bgpedge/internal/testenv"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/record"
)

// BenchmarkIngestToSpool: exaBGP update lines (~560 B, as exaBGP 4.2 writes
// them) from a stdin-like reader into the real, fsync'd spool. Reports
// events/s; exaBGP itself delivers ~2,500 events/s to a process.
func BenchmarkIngestToSpool(b *testing.B) {
	line := []byte(`{ "exabgp": "4.0.1", "time": 1795238477.3211005, "host" : "vm", "pid" : 25784, "ppid" : 25782, "counter": 8, "type": "update", "neighbor": { "address": { "local": "127.0.0.5", "peer": "127.0.0.2" }, "asn": { "local": 65001, "peer": 65001 } , "direction": "receive", "message": { "update": { "attribute": { "origin": "igp", "as-path": [ 65002 ], "confederation-path": [], "med": 20, "local-preference": 100, "community": [ [ 65002, 1 ], [ 65535, 65281 ] ], "extended-community": [ { "value": 842131417596004, "string": "target:65002:100" } ], "large-community": [ [ 65002, 1 , 1 ] ] }, "announce": { "ipv4 unicast": { "192.0.2.254": [ { "nlri": "100.64.20.0/24" } ] } } } } } }` + "\n")
	var feed bytes.Buffer
	for range b.N {
		feed.Write(line)
	}
	sp, err := buffer.Open(buffer.Options{Dir: b.TempDir(), MaxBytes: 8 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	cfg := DefaultConfig()
	cfg.StateDir = b.TempDir()
	cfg.RefreshOnStart = false
	p, err := New(Options{Config: cfg, OpenSpool: func() (Spool, error) { return sp, nil }, In: &feed, Out: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(line)))
	b.ResetTimer()
	start := time.Now()
	if err := p.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
}

// BenchmarkEncode: the forwarder-side cost of normalising one update line.
func BenchmarkEncode(b *testing.B) {
	line := []byte(`{ "exabgp": "4.0.1", "time": 1795238477.3211005, "host" : "vm", "pid" : 25784, "ppid" : 25782, "counter": 8, "type": "update", "neighbor": { "address": { "local": "127.0.0.5", "peer": "127.0.0.2" }, "asn": { "local": 65001, "peer": 65001 } , "direction": "receive", "message": { "update": { "attribute": { "origin": "igp", "as-path": [ 65002 ], "confederation-path": [], "med": 20, "local-preference": 100, "community": [ [ 65002, 1 ], [ 65535, 65281 ] ], "extended-community": [ { "value": 842131417596004, "string": "target:65002:100" } ], "large-community": [ [ 65002, 1 , 1 ] ] }, "announce": { "ipv4 unicast": { "192.0.2.254": [ { "nlri": "100.64.20.0/24" } ] } } } } } }`)
	enc := &Encoder{AgentID: "a", Raw: true}
	rec := record.Record{Seq: 1, Kind: record.KindExaBGP, Key: []byte("127.0.0.2"), Time: time.Now(), Payload: line}
	b.ReportAllocs()
	for b.Loop() {
		if err := enc.Encode(rec, outputs(func(string, []byte, []byte) {})); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExaBGPEndToEnd: GoBGP hands 10,000 routes (one UPDATE each, as
// every route has its own MED) to Debian's exaBGP at once; measured from the
// first AddPath to the last event durable in bgpedge's spool (to=spool), or
// acknowledged by the real Kafka broker (acks=all) through the process's own
// forwarder (to=kafka, needs BGPEDGE_TEST_KAFKA). One run per benchmark
// iteration; use -benchtime 1x.
func BenchmarkExaBGPEndToEnd(b *testing.B) {
	b.Run("to=spool", func(b *testing.B) { benchEndToEnd(b, false) })
	b.Run("to=kafka", func(b *testing.B) { benchEndToEnd(b, true) })
}

func benchEndToEnd(b *testing.B, kafka bool) {
	const routes = 10000
	bin := bgpedgeBinary(b)
	for range b.N {
		gAddr, eAddr := labAddrs()
		g := startGoBGP(b, gAddr, eAddr)
		dir := b.TempDir()
		metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePorts(b, "127.0.0.1", 1)[0])
		yaml := labConfig(b, dir, metrics, "")
		if kafka {
			enableKafkaForwarder(b, yaml, testenv.KafkaBrokers(b), startNATS(b))
		}
		e := startExaBGP(b, debianExaBGP(b), dir, exabgpConf(bin, yaml, g))
		testenv.Eventually(b, 30*time.Second, "session established", g.established)
		testenv.Eventually(b, 30*time.Second, "process up", func() bool { return metric(metrics, "bgpedge_exabgp_spool_available") == 1 })
		base := metric(metrics, "bgpedge_exabgp_spooled_records_total")
		nh, _ := bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.254"))
		paths := make([]*apiutil.Path, 0, routes)
		for i := range routes {
			nlri, _ := bgp.NewIPAddrPrefix(netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)}), 32))
			paths = append(paths, mustPath(b, bgp.RF_IPv4_UC, nlri, false, bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeMultiExitDisc(uint32(i)), bgp.NewPathAttributeLocalPref(100)))
		}
		b.ResetTimer()
		start := time.Now()
		if _, err := g.s.AddPath(apiutil.AddPathRequest{Paths: paths}); err != nil {
			b.Fatal(err)
		}
		var spooled float64
		testenv.Eventually(b, 5*time.Minute, "all routes spooled", func() bool {
			spooled = metric(metrics, "bgpedge_exabgp_spooled_records_total")
			return spooled-base >= routes
		})
		if kafka {
			// Every record spooled so far, the routes' included, acknowledged by Kafka.
			testenv.Eventually(b, 5*time.Minute, "all records acknowledged by Kafka", func() bool {
				return metricSum(metrics, "bgpedge_forwarder_records_total") >= spooled
			})
		}
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(routes/el.Seconds(), "events/s")
		e.stop()
	}
}
