package forwarder

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestWipedSpoolNotDeduplicated: an operator deletes the spool directory and
// starts again within JetStream's duplicate window. The new spool's message
// ids must not repeat the old one's, or JetStream acknowledges the new
// records as duplicates without storing them: acked, deleted, lost.
func TestWipedSpoolNotDeduplicated(t *testing.T) {
	n := testenv.StartNATS(t)
	cfg := unitConfig()
	cfg.NATS.Enabled = true
	cfg.NATS.URL = n.URL()
	dir := t.TempDir()
	const perRun = 20
	for range 2 {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		// Config.Options is how the agent opens its spool.
		sp, err := buffer.Open(buffer.Config{Dir: dir}.Options(testLogger(t), nil))
		if err != nil {
			t.Fatal(err)
		}
		for range perRun {
			if _, err := sp.Append(context.Background(), bmpRecord("192.0.2.1", 40)); err != nil {
				t.Fatal(err)
			}
		}
		last := sp.FirstUnacked() + perRun - 1
		f, err := newForwarder(cfg, sp, rawBMP, NewNATSSink(cfg.NATS, cfg.AgentID, nil), nil, testLogger(t), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		stop := startForwarder(t, f)
		testenv.Eventually(t, 30*time.Second, "run's records acked through NATS", func() bool { return sp.FirstUnacked() == last+1 })
		stop()
		if err := sp.Close(); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := openStream(t, ctx, cfg.NATS).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Msgs; got != 2*perRun {
		t.Fatalf("stream holds %d messages after two spools of %d records each; want %d (the second spool's ids repeated the first's)", got, perRun, 2*perRun)
	}
}
