package forwarder

import (
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// memSource is an in-memory Source for tests that do not need durability.
type memSource struct {
	mu      sync.Mutex
	changed chan struct{}
	recs    []record.Record // recs[i].Seq == i+1
	acked   uint64
	ackErr  error
}

var _ Source = (*memSource)(nil)

func newMemSource() *memSource { return &memSource{changed: make(chan struct{})} }

func (s *memSource) Append(recs ...record.Record) (first uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first = uint64(len(s.recs)) + 1
	for i, r := range recs {
		r.Seq = first + uint64(i)
		s.recs = append(s.recs, r)
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return first
}

func (s *memSource) Read(ctx context.Context, from uint64, max int) ([]record.Record, error) {
	for {
		s.mu.Lock()
		if from == 0 {
			from = 1
		}
		if n := uint64(len(s.recs)); from <= n {
			end := min(n, from+uint64(max)-1)
			out := append([]record.Record(nil), s.recs[from-1:end]...)
			s.mu.Unlock()
			return out, nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *memSource) AckThrough(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ackErr != nil {
		return s.ackErr
	}
	if seq > uint64(len(s.recs)) {
		return fmt.Errorf("ack %d beyond last %d", seq, len(s.recs))
	}
	s.acked = max(s.acked, seq)
	return nil
}

func (s *memSource) FirstUnacked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked + 1
}

func (s *memSource) Acked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

func (s *memSource) Len() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.recs))
}

// bmpRecord is a record carrying a syntactically plausible BMP message
// (common header: version 3, length, type 4 = initiation) of size bytes.
func bmpRecord(router string, size int) record.Record {
	p := make([]byte, size)
	p[0] = 3
	p[1], p[2], p[3], p[4] = byte(size>>24), byte(size>>16), byte(size>>8), byte(size)
	p[5] = 4
	return record.Record{Kind: record.KindBMP, Key: []byte(router), Source: router, Time: time.Now(), Payload: p}
}

// testConfig is a forwarder config for a test: unique topic prefix, short
// failover timings.
func testConfig(t testing.TB, brokers []string) Config {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	cfg := DefaultConfig()
	cfg.AgentID = "edge1"
	cfg.Kafka.Brokers = brokers
	cfg.Kafka.Partitions = 3
	cfg.Kafka.DialTimeout = 2 * time.Second
	cfg.Topics.Prefix = "test." + name + "." + hex.EncodeToString(b[:]) + "."
	cfg.Topics.Ensure = []string{StreamBMPRaw, StreamDLQ}
	cfg.Topics.Streams = testStreams
	cfg.FailoverAfter = 3 * time.Second
	cfg.FailbackAfter = 2 * time.Second
	cfg.ProbeInterval = 500 * time.Millisecond
	cfg.BackoffMin = 100 * time.Millisecond
	cfg.BackoffMax = time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.NATS.AckTimeout = 3 * time.Second
	return cfg
}

// startForwarder runs f until the test ends (or the returned stop is called)
// and fails the test if Run returns an error.
func startForwarder(t testing.TB, f *Forwarder) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("forwarder run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// idOracle consumes Kafka topics from the beginning and counts every message
// by the spool seq and index in its id header.
type idOracle struct {
	mu    sync.Mutex
	seen  map[uint64]map[int]int // seq → index → copies
	total int
	msgs  map[string][]*sarama.ConsumerMessage // kept when keep is set
	keep  bool
}

func (o *idOracle) add(m *sarama.ConsumerMessage) error {
	id := headerValue(m.Headers, HeaderID)
	_, seq, idx, err := ParseMessageID(id)
	if err != nil {
		return fmt.Errorf("%s/%d@%d: %w", m.Topic, m.Partition, m.Offset, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = map[uint64]map[int]int{}
	}
	if o.seen[seq] == nil {
		o.seen[seq] = map[int]int{}
	}
	o.seen[seq][idx]++
	o.total++
	if o.keep {
		if o.msgs == nil {
			o.msgs = map[string][]*sarama.ConsumerMessage{}
		}
		o.msgs[m.Topic] = append(o.msgs[m.Topic], m)
	}
	return nil
}

// distinct is the number of distinct ids seen.
func (o *idOracle) distinct() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, m := range o.seen {
		n += len(m)
	}
	return n
}

// missingSeqs lists the seqs in [1, last] with no message at all.
func (o *idOracle) missingSeqs(last uint64) []uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var miss []uint64
	for s := uint64(1); s <= last; s++ {
		if len(o.seen[s]) == 0 {
			miss = append(miss, s)
		}
	}
	return miss
}

func (o *idOracle) duplicates() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.total - func() int {
		n := 0
		for _, m := range o.seen {
			n += len(m)
		}
		return n
	}()
}

func headerValue(hs []*sarama.RecordHeader, key string) string {
	for _, h := range hs {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// consumeInto consumes topics from the oldest offsets into o until the test
// ends; topics must exist.
func consumeInto(t testing.TB, brokers []string, o *idOracle, topics ...string) {
	t.Helper()
	testenv.ConsumeFollow(t, brokers, func(m *sarama.ConsumerMessage) {
		if err := o.add(m); err != nil {
			t.Errorf("oracle: %v", err)
		}
	}, topics...)
}

// checkOracle hands every consumed message to check.
type checkOracle struct{ check func(*sarama.ConsumerMessage) }

// consumeChecked consumes topic from the oldest offsets into o until the test ends.
func consumeChecked(t testing.TB, brokers []string, o *checkOracle, topic string) {
	t.Helper()
	testenv.ConsumeFollow(t, brokers, o.check, topic)
}

// loadCapture splits a (gzip'd) raw BMP capture into messages.
func loadCapture(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = gz
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var msgs [][]byte
	for len(data) >= 6 {
		n := int(binary.BigEndian.Uint32(data[1:5]))
		if n < 6 || n > len(data) {
			return nil, fmt.Errorf("%s: bad BMP length %d at message %d", path, n, len(msgs))
		}
		msgs = append(msgs, data[:n:n])
		data = data[n:]
	}
	return msgs, nil
}

// killRecord is the deterministic content of spool seq s: the capture
// replayed sessions times, each as a different router.
func killRecord(msgs [][]byte, sessions int, seq uint64) record.Record {
	i := (seq - 1) % uint64(len(msgs))
	router := fmt.Sprintf("10.0.%d.1", ((seq-1)/uint64(len(msgs)))%uint64(sessions))
	return record.Record{Kind: record.KindBMP, Key: []byte(router), Source: router, Time: time.Unix(0, 0), Payload: msgs[i]}
}

// deleteTopicsAtEnd removes the test's topics from the shared broker.
func deleteTopicsAtEnd(t testing.TB, brokers []string, cfg Config, streams ...string) {
	t.Cleanup(func() {
		admin, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(t))
		if err != nil {
			return
		}
		defer admin.Close()
		for _, s := range streams {
			_ = admin.DeleteTopic(cfg.Topics.Topic(s))
		}
	})
}

// StreamBMPRaw is bmp.raw, the raw stream the tests' records go out on
// (the bmp package declares it; the forwarder knows no source's streams).
const StreamBMPRaw = "bmp.raw"

// testStreams declares the streams the tests' records go out on, as the
// bmp package and the forwarder declare them.
var testStreams = append(record.Streams{{Name: StreamBMPRaw, Format: record.FormatRaw, Kind: record.KindBMP}}, Streams()...)

// rawBMP sends BMP records raw on bmp.raw, as the forwarder of `bgpedge
// exabgp` does.
var rawBMP = Raw{Kind: record.KindBMP, Stream: StreamBMPRaw}
