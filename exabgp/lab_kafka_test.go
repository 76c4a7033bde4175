package exabgp

// Kafka side of the lab: the `bgpedge exabgp` process's own forwarder to the
// real broker (BGPEDGE_TEST_KAFKA), and a read-back of what it published.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// enableKafkaForwarder turns on the forwarder of a lab config: Kafka from the
// test environment, topics under a prefix of this test run's own (deleted
// when the test ends), NATS as the failover target that is not used while
// Kafka is up. It returns the topic prefix.
func enableKafkaForwarder(t testing.TB, yaml string, brokers []string, natsURL string) string {
	t.Helper()
	prefix := fmt.Sprintf("exabgptest%d.", rand.Uint32())
	ensure := Streams().Names()
	for i, s := range ensure {
		ensure[i] = strconv.Quote(s)
	}
	rewriteForwarder(t, yaml, fmt.Sprintf(`forwarder:
  enabled: true
  kafka:
    brokers: [%s]
  nats:
    url: %s
  topics:
    prefix: %s
    ensure: [%s]
`, strings.Join(brokers, ", "), natsURL, prefix, strings.Join(ensure, ", ")))
	t.Cleanup(func() {
		admin, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(t))
		if err != nil {
			return
		}
		for _, s := range Streams().Names() {
			_ = admin.DeleteTopic(prefix + s)
		}
		_ = admin.Close()
	})
	return prefix
}

// rewriteForwarder replaces the forwarder: section of a lab config file.
func rewriteForwarder(t testing.TB, path, section string) string {
	t.Helper()
	b, err := readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "forwarder:\n  enabled: false\n", section, 1)
	if s == string(b) {
		t.Fatal("lab config has no forwarder section to replace")
	}
	if err := writeFile(path, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return path
}

// kafkaEvent is an event as read from Kafka; Data is decoded into the shape
// the encoder gives session events.
type kafkaEvent struct {
	record.Event
	Data sessionData `json:"data"`
	Key  string      `json:"-"`
}

// kafkaReadBack collects what the forwarder published on the exabgp topics.
// The forwarder delivers at least once: copies of an event (same id) are
// counted, not kept.
type kafkaReadBack struct {
	t      testing.TB
	prefix string

	mu       sync.Mutex
	ids      map[string]bool
	dups     int
	routes   map[string][]kafkaEvent // by prefix, in partition (= key) order
	eors     []kafkaEvent
	peers    []kafkaEvent // in arrival order
	errs     []string
	bad      []string
	raw      map[uint64]int    // copies per spool seq
	rawLines map[uint64][]byte // the line as exaBGP wrote it
	rawKeys  map[uint64]string
	evSeqs   map[uint64]bool // spool seqs with a normalised or error event
}

// followKafka reads the exabgp topics under prefix from the start, for the
// rest of the test; the forwarder creates them when it connects.
func followKafka(t testing.TB, brokers []string, prefix string) *kafkaReadBack {
	t.Helper()
	kb := &kafkaReadBack{t: t, prefix: prefix, ids: map[string]bool{}, routes: map[string][]kafkaEvent{},
		raw: map[uint64]int{}, rawLines: map[uint64][]byte{}, rawKeys: map[uint64]string{}, evSeqs: map[uint64]bool{}}
	client, err := sarama.NewClient(brokers, testenv.SaramaConfig(t))
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	defer client.Close()
	topics := Streams().Names()
	for i, s := range topics {
		topics[i] = prefix + s
	}
	testenv.Eventually(t, 60*time.Second, "forwarder created the exabgp topics", func() bool {
		for _, topic := range topics {
			if parts, err := client.Partitions(topic); err != nil || len(parts) == 0 {
				return false
			}
		}
		return true
	})
	testenv.ConsumeFollow(t, brokers, kb.add, topics...)
	return kb
}

func (kb *kafkaReadBack) add(m *sarama.ConsumerMessage) {
	kb.mu.Lock()
	defer kb.mu.Unlock()
	stream := strings.TrimPrefix(m.Topic, kb.prefix)
	if stream == StreamRaw {
		seq, ok := headerSeq(m)
		if !ok {
			kb.bad = append(kb.bad, fmt.Sprintf("raw message without a valid id header: %s", m.Value))
			return
		}
		kb.raw[seq]++
		kb.rawLines[seq] = m.Value
		kb.rawKeys[seq] = string(m.Key)
		return
	}
	var ev kafkaEvent
	if err := json.Unmarshal(m.Value, &ev); err != nil {
		kb.bad = append(kb.bad, fmt.Sprintf("%s: %v: %s", stream, err, m.Value))
		return
	}
	if kb.ids[ev.ID] {
		kb.dups++
		return
	}
	kb.ids[ev.ID] = true
	kb.evSeqs[ev.Seq] = true
	ev.Key = string(m.Key)
	switch {
	case stream == StreamErrors:
		kb.errs = append(kb.errs, string(m.Value))
	case stream == StreamRoute && ev.Route != nil && ev.Route.EndOfRIB:
		kb.eors = append(kb.eors, ev)
	case stream == StreamRoute && ev.Route != nil:
		kb.routes[ev.Route.Prefix] = append(kb.routes[ev.Route.Prefix], ev)
	case stream == StreamPeer && ev.Route == nil:
		kb.peers = append(kb.peers, ev)
	default:
		kb.bad = append(kb.bad, fmt.Sprintf("%s: unexpected event %s", stream, m.Value))
	}
}

// headerSeq is the spool seq of a message, from its id header "<agent>:<seq>[:<index>]".
func headerSeq(m *sarama.ConsumerMessage) (uint64, bool) {
	for _, h := range m.Headers {
		if h == nil || string(h.Key) != "bgpedge-id" {
			continue
		}
		f := strings.Split(string(h.Value), ":")
		if len(f) < 2 {
			return 0, false
		}
		seq, err := strconv.ParseUint(f[1], 10, 64)
		return seq, err == nil
	}
	return 0, false
}

// caughtUp says whether Kafka holds exactly spool seqs 1..n on the raw topic,
// and a normalised (or error) event for each of them.
func (kb *kafkaReadBack) caughtUp(n uint64) bool {
	kb.mu.Lock()
	defer kb.mu.Unlock()
	if n == 0 || uint64(len(kb.raw)) != n {
		return false
	}
	for s := uint64(1); s <= n; s++ {
		if kb.raw[s] == 0 || !kb.evSeqs[s] {
			return false
		}
	}
	return true
}

// has says whether a session event that matches is on Kafka.
func (kb *kafkaReadBack) has(match func(kafkaEvent) bool) bool {
	kb.mu.Lock()
	defer kb.mu.Unlock()
	for _, ev := range kb.peers {
		if match(ev) {
			return true
		}
	}
	return false
}

// spoolState opens a stopped process's spool read-only: the last seq it ever
// handed out, the acknowledgement watermark, and the records not yet
// acknowledged (acknowledged ones are reclaimed, so only these are left).
func spoolState(t testing.TB, dir string) (buffer.Stats, []record.Record) {
	t.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: filepath.Join(dir, "exabgp", "spool"), ReadOnly: true})
	if err != nil {
		t.Fatalf("open spool: %v", err)
	}
	st := sp.Stats()
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	return st, readSpool(t, filepath.Join(dir, "exabgp", "spool"))
}
