package forwarder

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestNATSMaxPayloadDeadLetters: a NATS server whose max_payload is below
// kafka.max_message_bytes refuses a message Kafka would take. While on
// NATS, such a record goes to the dead-letter stream, cut to the server's
// limit, and the records after it flow, instead of the session failing on
// it for ever.
func TestNATSMaxPayloadDeadLetters(t *testing.T) {
	n := testenv.StartNATS(t, func(o *server.Options) { o.MaxPayload = 32 << 10 })
	cfg := unitConfig()
	cfg.NATS.Enabled = true
	cfg.NATS.URL = n.URL()
	cfg.DLQ.Enabled = true
	src := newMemSource()
	src.Append(bmpRecord("192.0.2.1", 40))
	src.Append(bmpRecord("192.0.2.1", 100<<10)) // under the Kafka limit, over NATS's
	src.Append(bmpRecord("192.0.2.1", 40))
	f, err := newForwarder(cfg, src, rawBMP, NewNATSSink(cfg.NATS, cfg.AgentID, nil), nil, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	startForwarder(t, f)
	testenv.Eventually(t, 30*time.Second, "every record acked through NATS", func() bool { return src.Acked() == 3 })
	if v := testutil.ToFloat64(f.m.deadLetters.WithLabelValues("sent")); v != 1 {
		t.Fatalf("dead letters sent = %v, want 1", v)
	}
	if v := testutil.ToFloat64(f.m.errors.WithLabelValues(SinkNATS, "write")); v != 0 {
		t.Fatalf("nats write errors = %v: the oversize record was published", v)
	}
}
