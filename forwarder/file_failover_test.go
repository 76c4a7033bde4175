package forwarder

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// forwarder.sinks: [kafka, file] with Kafka unreachable (a closed gate in
// front of the test broker): the forwarder drains to the file sink after
// failover_after, returns to Kafka once the gate opens and Kafka has been
// healthy for failback_after, and every record is in the files or in Kafka
// (acceptance: failover by role).
func TestFailoverKafkaToFileAndBack(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	gate := testenv.NewGate(t, testenv.LoopbackAddr(t), brokers[0])
	gate.Close() // Kafka is down from the start
	dir := t.TempDir()
	cfg := testConfig(t, []string{gate.Addr()})
	cfg.Sinks = []string{SinkKafka, SinkFile}
	cfg.File.Dir = dir
	cfg.Topics.Ensure = []string{StreamBMPRaw}
	// The topic exists, as it does where Kafka has been in use: a Kafka
	// probe finding it missing would keep the forwarder on the file sink.
	cfg.Topics.Overrides = map[string]string{StreamBMPRaw: testenv.NewTopic(t, brokers, 3)}
	src := newMemSource()
	f, err := New(cfg, src, rawBMP, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if r := f.Rank(SinkKafka); r != 2 || f.Rank(SinkFile) != 1 || f.Rank(SinkNone) != 0 {
		t.Errorf("ranks kafka %d, file %d, none %d", r, f.Rank(SinkFile), f.Rank(SinkNone))
	}
	stopFwd := startForwarder(t, f)
	app := startAppender(t, src, 20, 20*time.Millisecond)
	began := time.Now()
	testenv.Eventually(t, cfg.FailoverAfter+30*time.Second, "failover to the file sink", func() bool { return f.ActiveSink() == SinkFile })
	t.Logf("on the file sink %v after the start with kafka down (failover_after %v)", time.Since(began).Round(100*time.Millisecond), cfg.FailoverAfter)
	testenv.Eventually(t, 30*time.Second, "records acked by the file sink", func() bool { return src.Acked() > 500 })
	if v := testutil.ToFloat64(f.m.failovers); v != 1 {
		t.Errorf("failovers = %v, want 1", v)
	}
	gate.Open()
	up := time.Now()
	testenv.Eventually(t, 60*time.Second, "back on kafka", func() bool { return f.ActiveSink() == SinkKafka })
	t.Logf("back on kafka %v after it became reachable (failback_after %v)", time.Since(up).Round(100*time.Millisecond), cfg.FailbackAfter)
	backAt := src.Len()
	testenv.Eventually(t, 60*time.Second, "records after failback acked", func() bool { return src.Acked() > backAt })
	app.stop()
	testenv.Eventually(t, 60*time.Second, "spool drained", func() bool { return src.Acked() == src.Len() })
	stopFwd()

	total := src.Len()
	copies := checkRawRuns(t, readStream(t, dir, StreamBMPRaw), func(seq uint64) []byte { return src.recs[seq-1].Payload }, total)
	var o idOracle
	consumeInto(t, brokers, &o, cfg.Topics.Topic(StreamBMPRaw))
	var inFiles int
	for seq := uint64(1); seq <= total; seq++ {
		if copies[seq] > 0 {
			inFiles++
		}
	}
	testenv.Eventually(t, 60*time.Second, "every record in the files or in kafka", func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		for seq := uint64(1); seq <= total; seq++ {
			if copies[seq] == 0 && len(o.seen[seq]) == 0 {
				return false
			}
		}
		return true
	})
	if inFiles == 0 || inFiles == int(total) {
		t.Errorf("%d of %d records in the files: want the outage's part there, the rest in kafka", inFiles, total)
	}
	t.Logf("%d records: %d in the files during the outage, %d messages in kafka, 0 missing", total, inFiles, o.distinct())
}
