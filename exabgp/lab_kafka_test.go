package exabgp

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// TestExaBGPToKafka: the whole path with the real broker. GoBGP announces
// routes to exaBGP; `bgpedge exabgp` spools them and its own forwarder
// delivers the normalised route events to Kafka, one message per prefix,
// keyed by neighbor and prefix, with stable ids.
func TestExaBGPToKafka(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	const routes = 300
	bin := bgpedgeBinary(t)
	natsURL := startNATS(t) // the forwarder's failover target; not used while Kafka is up
	gAddr, eAddr := labAddrs()
	g := startGoBGP(t, gAddr, eAddr)
	dir := t.TempDir()
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t, "127.0.0.1"))
	prefix := fmt.Sprintf("exabgptest%d.", rand.Uint32())
	yaml := labConfig(t, dir, metrics, "")
	// Turn the forwarder on: Kafka from the test environment, topics under a
	// prefix of this test's own.
	yaml = rewriteForwarder(t, yaml, fmt.Sprintf(`forwarder:
  enabled: true
  kafka:
    brokers: [%s]
  nats:
    url: %s
  topics:
    prefix: %s
`, strings.Join(brokers, ", "), natsURL, prefix))
	startExaBGP(t, dir, exabgpConf(bin, yaml, g))
	testenv.Eventually(t, 30*time.Second, "exaBGP session with GoBGP established", g.established)

	topic := prefix + "exabgp.route"
	client, err := sarama.NewClient(brokers, testenv.SaramaConfig(t))
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(func() {
		_ = client.Close()
		if admin, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(t)); err == nil {
			for _, s := range []string{"exabgp.route", "exabgp.peer", "exabgp.raw", "exabgp.errors"} {
				_ = admin.DeleteTopic(prefix + s)
			}
			_ = admin.Close()
		}
	})
	testenv.Eventually(t, 60*time.Second, "forwarder created "+topic, func() bool {
		parts, err := client.Partitions(topic)
		return err == nil && len(parts) > 0
	})
	var mu sync.Mutex
	got := map[string]record.Event{}
	keys := map[string]string{}
	testenv.ConsumeFollow(t, brokers, func(m *sarama.ConsumerMessage) {
		var ev record.Event
		if err := json.Unmarshal(m.Value, &ev); err != nil || ev.Route == nil {
			t.Errorf("bad message on %s: %s", topic, m.Value)
			return
		}
		mu.Lock()
		got[ev.Route.Prefix] = ev
		keys[ev.Route.Prefix] = string(m.Key)
		mu.Unlock()
	}, topic)

	nh, _ := bgp.NewPathAttributeNextHop(netip.MustParseAddr("192.0.2.254"))
	var specs []*pathSpec
	for i := range routes {
		nlri, _ := bgp.NewIPAddrPrefix(v4Prefix(i))
		specs = append(specs, &pathSpec{fam: bgp.RF_IPv4_UC, nlri: nlri, attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(0), nh, bgp.NewPathAttributeMultiExitDisc(uint32(i)), bgp.NewPathAttributeLocalPref(150)}})
	}
	g.apply(t, specs)
	testenv.Eventually(t, 120*time.Second, "every route event in Kafka", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= routes
	})
	mu.Lock()
	defer mu.Unlock()
	for i := range routes {
		p := v4Prefix(i).String()
		ev, ok := got[p]
		if !ok {
			t.Fatalf("%s not in Kafka", p)
		}
		r := ev.Route
		if r.Action != "announce" || r.NextHop != "192.0.2.254" || r.MED == nil || *r.MED != uint32(i) || r.LocalPref == nil || *r.LocalPref != 150 ||
			ev.Peer == nil || ev.Peer.Address != gAddr || ev.Agent != "edge-test" || !strings.HasPrefix(ev.ID, fmt.Sprintf("edge-test:%d", ev.Seq)) {
			t.Fatalf("%s: %s", p, mustJSON(ev))
		}
		if want := gAddr + "|ipv4-unicast|" + p; keys[p] != want {
			t.Fatalf("%s: key %q, want %q", p, keys[p], want)
		}
	}
}

// rewriteForwarder replaces the forwarder: section of a lab config file.
func rewriteForwarder(t *testing.T, path, section string) string {
	t.Helper()
	b, err := readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "forwarder:\n  enabled: false\n", section, 1)
	if err := writeFile(path, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return path
}
