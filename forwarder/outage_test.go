package forwarder

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// outageLength is how long the outage tests keep a component down: the
// acceptance criterion is two minutes; -short shortens it for development.
func outageLength() time.Duration {
	if testing.Short() {
		return 15 * time.Second
	}
	return 2 * time.Minute
}

// appender adds records to src at a steady rate until stopped, as BMP
// sessions would.
type appender struct {
	src     *memSource
	stopped chan struct{}
	done    sync.WaitGroup
	n       atomic.Uint64
}

func startAppender(t testing.TB, src *memSource, perTick int, tick time.Duration) *appender {
	a := &appender{src: src, stopped: make(chan struct{})}
	a.done.Add(1)
	go func() {
		defer a.done.Done()
		tk := time.NewTicker(tick)
		defer tk.Stop()
		routers := []string{"192.0.2.1", "192.0.2.2", "198.51.100.7"}
		for i := 0; ; i++ {
			select {
			case <-a.stopped:
				return
			case <-tk.C:
			}
			for j := range perTick {
				src.Append(bmpRecord(routers[(i+j)%len(routers)], 120))
				a.n.Add(1)
			}
		}
	}()
	t.Cleanup(a.stop)
	return a
}

func (a *appender) stop() {
	select {
	case <-a.stopped:
	default:
		close(a.stopped)
	}
	a.done.Wait()
}

// waitFor lets a scenario run for d (an outage's length), failing early
// only if the test's own deadline would pass.
func waitFor(d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	<-timer.C // the scenario's duration, not a synchronisation point
}

// bridgeAll runs the bridge until JetStream has nothing left for it.
func bridgeAll(t testing.TB, cfg Config) uint64 {
	t.Helper()
	b, err := NewBridge(BridgeOptions{Config: cfg, Logger: testLogger(t), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	testenv.Eventually(t, 2*time.Minute, "bridge moved everything from JetStream", func() bool {
		pctx, c := context.WithTimeout(ctx, 5*time.Second)
		defer c()
		p, err := b.Pending(pctx)
		return err == nil && p == 0 && b.Moved() > 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("bridge: %v", err)
	}
	return b.Moved()
}

// outage is a forwarder with Kafka and JetStream fed by an appender, caught
// just after Kafka stopped and the forwarder failed over to JetStream.
type outage struct {
	k       *testenv.Kafka
	n       *testenv.NATS
	cfg     Config
	src     *memSource
	f       *Forwarder
	stopFwd func()
	app     *appender
	down    time.Time // when Kafka stopped
}

func startOutage(t *testing.T) *outage {
	t.Helper()
	r := &outage{k: testenv.KafkaControl(t), n: testenv.StartNATS(t)}
	r.cfg = testConfig(t, r.k.Brokers())
	r.cfg.NATS.Enabled = true
	r.cfg.NATS.URL = r.n.URL()
	r.cfg.Topics.Ensure = []string{StreamBMPRaw}
	r.src = newMemSource()
	f, err := New(r.cfg, r.src, rawBMP, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	r.f = f
	r.stopFwd = startForwarder(t, f)
	r.app = startAppender(t, r.src, 20, 20*time.Millisecond)
	testenv.Eventually(t, 60*time.Second, "first records acked by kafka", func() bool {
		return f.ActiveSink() == SinkKafka && r.src.Acked() > 500
	})
	r.k.Stop(t)
	r.down = time.Now()
	testenv.Eventually(t, r.cfg.FailoverAfter+30*time.Second, "failover to nats", func() bool { return f.ActiveSink() == SinkNATS })
	return r
}

// bridgeAndCheck moves what JetStream holds into Kafka and requires every
// record the source ever handed out to be there; it returns how many the
// bridge moved and the records sent.
func bridgeAndCheck(t *testing.T, k *testenv.Kafka, cfg Config, src *memSource, o *idOracle) (moved uint64, total int) {
	t.Helper()
	moved = bridgeAll(t, cfg)
	consumeInto(t, k.Brokers(), o, cfg.Topics.Topic(StreamBMPRaw))
	total = int(src.Len())
	testenv.Eventually(t, 2*time.Minute, "every record in kafka", func() bool { return o.distinct() >= total })
	if miss := o.missingSeqs(src.Len()); len(miss) > 0 {
		t.Fatalf("%d records missing in kafka, first %v", len(miss), miss[:min(10, len(miss))])
	}
	return moved, total
}

// Kafka stopped for two minutes mid-stream: the forwarder fails over to
// JetStream, returns to Kafka after the restart, and the bridge moves the
// JetStream part into Kafka: 0 missing (acceptance 3).
func TestKafkaOutageFailsOverToJetStream(t *testing.T) {
	t.Parallel()
	r := startOutage(t)
	k, cfg, src, f, stopFwd, app, down := r.k, r.cfg, r.src, r.f, r.stopFwd, r.app, r.down
	t.Logf("failed over to nats %v after kafka stopped (failover_after %v)", time.Since(down).Round(100*time.Millisecond), cfg.FailoverAfter)
	acked := src.Acked()
	waitFor(outageLength() - time.Since(down))
	if src.Acked() <= acked {
		t.Fatalf("nothing acked via nats during the outage (acked %d)", acked)
	}
	k.Start(t)
	up := time.Now()
	testenv.Eventually(t, 90*time.Second, "back on kafka", func() bool { return f.ActiveSink() == SinkKafka })
	t.Logf("returned to kafka %v after its restart (failback_after %v)", time.Since(up).Round(100*time.Millisecond), cfg.FailbackAfter)
	backAt := src.Len()
	testenv.Eventually(t, 60*time.Second, "records after failback acked", func() bool { return src.Acked() > backAt })
	app.stop()
	testenv.Eventually(t, 60*time.Second, "spool drained", func() bool { return src.Acked() == src.Len() })
	stopFwd()

	o := idOracle{keep: true}
	moved, total := bridgeAndCheck(t, k, cfg, src, &o)
	// What took the JetStream path keeps its key and headers through the bridge.
	o.mu.Lock()
	for _, m := range o.msgs[cfg.Topics.Topic(StreamBMPRaw)] {
		if len(m.Key) == 0 || string(m.Key) != headerValue(m.Headers, HeaderRouter) || headerValue(m.Headers, HeaderAgent) != "edge1" ||
			headerValue(m.Headers, HeaderKind) != "bmp" || headerValue(m.Headers, HeaderStream) != StreamBMPRaw || len(m.Value) != 120 {
			t.Errorf("message %d/%d: key %q, headers %v, %d bytes", m.Partition, m.Offset, m.Key, m.Headers, len(m.Value))
			break
		}
	}
	o.mu.Unlock()
	t.Logf("%d records sent, %d via jetstream and the bridge, 0 missing, %d duplicates", total, moved, o.duplicates())
}

// Kafka and NATS both down for two minutes: the spool grows, nothing is
// lost, and everything drains after recovery (acceptance 4).
func TestBothSinksDownSpoolGrows(t *testing.T) {
	t.Parallel()
	r := startOutage(t)
	k, n, cfg, src, f, stopFwd, app, down := r.k, r.n, r.cfg, r.src, r.f, r.stopFwd, r.app, r.down
	n.Stop(t)
	testenv.Eventually(t, 30*time.Second, "no sink active", func() bool { return f.ActiveSink() == SinkNone })
	ackedDown, lenDown := src.Acked(), src.Len()
	waitFor(outageLength() - time.Since(down))
	if a := src.Acked(); a != ackedDown {
		t.Errorf("acked moved from %d to %d with both sinks down", ackedDown, a)
	}
	if l := src.Len(); l <= lenDown {
		t.Errorf("spool did not grow during the outage")
	} else {
		t.Logf("backlog grew from %d to %d records while both sinks were down", lenDown-ackedDown, l-src.Acked())
	}
	if s := f.ActiveSink(); s != SinkNone {
		t.Errorf("active sink %q with both sinks down", s)
	}
	n.Start(t)
	k.Start(t)
	testenv.Eventually(t, 90*time.Second, "back on kafka", func() bool { return f.ActiveSink() == SinkKafka })
	app.stop()
	testenv.Eventually(t, 90*time.Second, "spool drained", func() bool { return src.Acked() == src.Len() })
	stopFwd()

	var o idOracle
	moved, total := bridgeAndCheck(t, k, cfg, src, &o)
	t.Logf("%d records sent, %d via jetstream and the bridge, 0 missing, %d duplicates", total, moved, o.duplicates())
}
