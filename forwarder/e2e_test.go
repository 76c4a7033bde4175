package forwarder

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// recordingSpool remembers what was spooled, so the oracle knows every
// record (and so every output id) that must reach Kafka.
type recordingSpool struct {
	*buffer.Spool
	mu   sync.Mutex
	recs []record.Record
}

func (s *recordingSpool) Append(ctx context.Context, recs ...record.Record) (uint64, error) {
	first, err := s.Spool.Append(ctx, recs...)
	if err != nil {
		return first, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range recs {
		r.Seq = first + uint64(i)
		r.Key = append([]byte(nil), r.Key...)
		r.Payload = append([]byte(nil), r.Payload...)
		s.recs = append(s.recs, r)
	}
	return first, nil
}

func bmpEncoder(t testing.TB, agent string) Encoder {
	t.Helper()
	be, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: bmp.DefaultEncoding(), AgentID: agent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return EncoderFunc(be.Encode)
}

// Every shared capture, replayed over TCP into the BMP station, reaches Kafka
// through the spool and the forwarder with the bmp encoder: every output id
// in the right topic with the right key, 0 missing, and the route events of
// one prefix of one peer in order (acceptance 1).
func TestEndToEndCapturesToKafka(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	files := testenv.BMPCaptures(t, 20)
	// The 100k-route dump is 98 % of all messages; under the race detector
	// (or -short) only its first messages are replayed, so the test stays
	// within minutes. Without either it is replayed whole.
	maxPerStream := 0
	if raceEnabled || testing.Short() {
		maxPerStream = 20000
	}
	var streams [][]byte
	for _, f := range files {
		s, err := bmp.LoadReplayFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, st := range s {
			streams = append(streams, firstMessages(st, maxPerStream))
		}
	}

	sp, err := buffer.Open(buffer.Options{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	spool := &recordingSpool{Spool: sp}
	cfg := testConfig(t, brokers)
	cfg.Topics.Streams = append(bmp.Streams(), Streams()...)
	cfg.Topics.Ensure = append(bmp.Streams().Names(), StreamDLQ)
	deleteTopicsAtEnd(t, brokers, cfg, cfg.Topics.Ensure...)
	f, err := New(cfg, sp, bmpEncoder(t, cfg.AgentID), testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	stopFwd := startForwarder(t, f)
	t.Cleanup(func() { stopFwd(); _ = sp.Close() })

	var (
		mu       sync.Mutex
		got      = map[string]int{}
		where    = map[string][2]string{} // id → stream and key where it was first seen
		lastSeen = map[string][2]int{}    // route key → (seq, index) of its latest first-seen event
		disorder int
	)
	topicStream := map[string]string{}
	for _, s := range cfg.Topics.Ensure {
		topicStream[cfg.Topics.Topic(s)] = s
	}
	o := &checkOracle{check: func(m *sarama.ConsumerMessage) {
		id := headerValue(m.Headers, HeaderID)
		stream := topicStream[m.Topic]
		mu.Lock()
		defer mu.Unlock()
		got[id]++
		if got[id] > 1 {
			return
		}
		where[id] = [2]string{stream, string(m.Key)}
		if !strings.HasPrefix(stream, "bmp.route.") {
			return
		}
		_, seq, idx, _ := ParseMessageID(id)
		k := stream + "|" + string(m.Key)
		if p, ok := lastSeen[k]; ok && (p[0] > int(seq) || p[0] == int(seq) && p[1] > idx) {
			disorder++
		}
		lastSeen[k] = [2]int{int(seq), idx}
	}}
	// Consume while the forwarder drains: the topics exist once it connected.
	testenv.Eventually(t, time.Minute, "forwarder connected to kafka", func() bool { return f.ActiveSink() == SinkKafka })
	for topic := range topicStream {
		consumeChecked(t, brokers, o, topic)
	}

	bcfg := bmp.DefaultConfig()
	bcfg.Listen = "127.0.0.1:0"
	l, err := bmp.NewListener(bcfg, spool, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	t0 := time.Now()
	stats, err := bmp.Replay(ctx, bmp.ReplayOptions{Streams: streams, Target: l.Addr().String(), DrainTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// Synthetic peer-downs (sessions that end with peers up) add records.
	testenv.Eventually(t, 30*time.Second, "every message spooled", func() bool {
		spool.mu.Lock()
		defer spool.mu.Unlock()
		n := uint64(0)
		for _, r := range spool.recs {
			if r.Kind == record.KindBMP {
				n++
			}
		}
		if n > stats.Messages {
			t.Fatalf("%d BMP records spooled, only %d messages sent", n, stats.Messages)
		}
		return n == stats.Messages
	})
	last := spool.recs[len(spool.recs)-1].Seq
	t.Logf("replayed and spooled in %v", time.Since(t0).Round(time.Millisecond))
	// The expected outputs: the same records through a second encoder.
	type want struct{ stream, key string }
	expected := map[string]want{}
	oracleEnc := bmpEncoder(t, cfg.AgentID)
	for _, r := range spool.recs {
		if err := oracleEnc.Encode(r, func(m record.Output) {
			expected[MessageID(cfg.AgentID, r.Seq, m.Index)] = want{m.Stream, string(m.Key)}
		}); err != nil {
			expected[MessageID(cfg.AgentID, r.Seq, -1)] = want{StreamDLQ, string(r.Key)}
		}
	}
	t.Logf("oracle encoded after %v", time.Since(t0).Round(time.Millisecond))
	testenv.Eventually(t, 5*time.Minute, "spool drained to kafka", func() bool { return sp.FirstUnacked() > last })
	t.Logf("drained to kafka after %v", time.Since(t0).Round(time.Millisecond))

	testenv.Eventually(t, 3*time.Minute, "as many ids in kafka as expected", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= len(expected)
	})
	t.Logf("oracle consumed after %v", time.Since(t0).Round(time.Millisecond))
	mu.Lock()
	defer mu.Unlock()
	var wrong []string
	missing := 0
	for id := range expected {
		if got[id] == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d expected ids missing in kafka", missing, len(expected))
	}
	for id, w := range expected {
		if g := where[id]; g != [2]string{w.stream, w.key} && len(wrong) < 10 {
			wrong = append(wrong, fmt.Sprintf("%s in %s key %q, want %s key %q", id, g[0], g[1], w.stream, w.key))
		}
	}
	for id := range got {
		if _, ok := expected[id]; !ok && len(wrong) < 10 {
			wrong = append(wrong, fmt.Sprintf("unexpected id %q", id))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("messages in the wrong topic or with the wrong key:\n%s", strings.Join(wrong, "\n"))
	}
	if disorder > 0 {
		t.Errorf("%d route events out of order for their prefix and peer", disorder)
	}
	perStream := map[string]int{}
	dups := 0
	for id, n := range got {
		perStream[expected[id].stream]++
		dups += n - 1
	}
	names := make([]string, 0, len(perStream))
	for s := range perStream {
		names = append(names, s)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, s := range names {
		fmt.Fprintf(&b, " %s=%d", s, perStream[s])
	}
	t.Logf("%d captures, %d sessions, %d records spooled (BMP messages and synthetic peer-downs), %d output messages expected, %d missing, %d duplicates, %d route keys in order; per stream:%s",
		len(files), len(streams), len(spool.recs), len(expected), missing, dups, len(lastSeen), b.String())
}

// firstMessages cuts a BMP byte stream after n whole messages (n = 0: all).
func firstMessages(stream []byte, n int) []byte {
	if n <= 0 {
		return stream
	}
	off := 0
	for i := 0; i < n && off+6 <= len(stream); i++ {
		off += int(binary.BigEndian.Uint32(stream[off+1 : off+5]))
	}
	return stream[:min(off, len(stream))]
}
