package bmp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestListenerSpoolsInOrder sends a stream in odd-sized writes and checks the
// spool holds every message, byte for byte, in order, with the router's
// identity, and that batching happened (fewer appends than messages).
func TestListenerSpoolsInOrder(t *testing.T) {
	spool := &memSpool{}
	st := startStation(t, spool, nil)

	var stream [][]byte
	stream = append(stream, initiation(), peerUp(1))
	for i := range 5000 {
		stream = append(stream, routeMonitoring(1, i))
	}
	stream = append(stream, peerDown(1))
	all := bytes.Join(stream, nil)

	c := dialFrom(t, st.addr, "127.0.0.1")
	for off := 0; off < len(all); {
		n := min(len(all)-off, 7919) // cuts messages at arbitrary points
		if _, err := c.Write(all[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	c.CloseWrite()
	awaitStationClose(t, c)

	recs := spool.snapshot()
	source := c.LocalAddr().String()
	got := bySource(recs, source)
	if len(got) != len(stream) {
		t.Fatalf("spooled %d messages, sent %d", len(got), len(stream))
	}
	for i := range stream {
		if !bytes.Equal(got[i], stream[i]) {
			t.Fatalf("message %d differs", i)
		}
	}
	for _, r := range recs {
		if string(r.Key) != "127.0.0.1" || r.Time.IsZero() {
			t.Fatalf("record key %q time %v", r.Key, r.Time)
		}
		if r.Kind == record.KindBMPSyntheticPeerDown {
			t.Fatal("synthetic peer down for a peer that went down")
		}
	}
	if spool.appends >= len(stream)/2 {
		t.Errorf("%d appends for %d messages: not batching", spool.appends, len(stream))
	}
	t.Logf("%d messages in %d appends", len(stream), spool.appends)
	if v := st.metric(t, "bgpedge_bmp_messages_received_total", "type", "route-monitoring"); v != 5000 {
		t.Errorf("route-monitoring counter %v", v)
	}
	if v := st.metric(t, "bgpedge_bmp_sessions_closed_total", "reason", CloseEOF); v != 1 {
		t.Errorf("closed{eof} %v", v)
	}
}

// TestSyntheticPeerDown checks that peers left up when a session ends get a
// synthetic peer-down record with their last per-peer header, after the
// session's last message; and that peers that went down do not. A peer that
// sent routes without a Peer Up (as routers do for the Loc-RIB) counts as
// up, with the header of its first Route Monitoring message.
func TestSyntheticPeerDown(t *testing.T) {
	tests := []struct {
		name     string
		end      func(st *testStation, c *net.TCPConn)
		reason   string
		lastSent []byte
	}{
		{"router closes", func(st *testStation, c *net.TCPConn) { c.CloseWrite() }, CloseEOF, nil},
		{"framing error", func(st *testStation, c *net.TCPConn) { c.Write([]byte{9, 0, 0, 0, 6, 0}) }, ReasonBadVersion, nil},
		{"listener shutdown", func(st *testStation, c *net.TCPConn) {
			if err := st.l.Close(context.Background()); err != nil {
				t.Error(err)
			}
		}, CloseShutdown, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spool := &memSpool{}
			st := startStation(t, spool, nil)
			c := dialFrom(t, st.addr, "")
			// Peer 1 up, 2 up, 3 up; 2 down; 1 up again (refreshed header).
			again := peerUp(1)
			again[HeaderLen+PerPeerHeaderLen-1] = 0x42 // newer timestamp
			// Peer 4 sends routes without a Peer Up, pre- and post-policy
			// (L flag), between peer 3's; peer 5 too, then goes down.
			rm4post := routeMonitoring(4, 3)
			rm4post[HeaderLen+1] |= 0x40
			sent := [][]byte{initiation(), peerUp(1), peerUp(2), peerUp(3), peerDown(2), again, routeMonitoring(3, 1),
				routeMonitoring(4, 1), routeMonitoring(3, 2), rm4post, routeMonitoring(4, 2),
				routeMonitoring(5, 1), peerDown(5)}
			c.Write(bytes.Join(sent, nil))
			testenv.Eventually(t, 10*time.Second, "station state", func() bool { return spool.len() == len(sent) })
			tt.end(st, c)
			awaitStationClose(t, c)
			testenv.Eventually(t, 10*time.Second, "station state", func() bool { return st.metric(t, "bgpedge_bmp_sessions_closed_total", "reason", tt.reason) == 1 })

			recs := spool.snapshot()
			if len(recs) != len(sent)+3 {
				t.Fatalf("%d records, want %d messages + 3 synthetic", len(recs), len(sent))
			}
			want := map[string]bool{
				string(again[HeaderLen : HeaderLen+PerPeerHeaderLen]):                 true,
				string(peerUp(3)[HeaderLen : HeaderLen+PerPeerHeaderLen]):             true,
				string(routeMonitoring(4, 1)[HeaderLen : HeaderLen+PerPeerHeaderLen]): true,
			}
			for _, r := range recs[len(sent):] {
				if r.Kind != record.KindBMPSyntheticPeerDown || !want[string(r.Payload)] {
					t.Fatalf("unexpected record %v %x", r.Kind, r.Payload)
				}
				delete(want, string(r.Payload))
			}
			if v := st.metric(t, "bgpedge_bmp_synthetic_peer_downs_total"); v != 3 {
				t.Errorf("synthetic counter %v", v)
			}
		})
	}
}

// TestReconnectedRouter: a router reconnects while its old session is
// still open (a connection that died without a FIN) and announces two of
// its three peers again. When the old session ends, it marks down only the
// peer the new one did not announce, and that synthetic peer-down is
// spooled before what the new session sends after the old one began to
// end, even when the new session is faster to flush.
func TestReconnectedRouter(t *testing.T) {
	spool := &memSpool{holdSynthetic: make(chan struct{})}
	st := startStation(t, spool, nil)
	a := dialFrom(t, st.addr, "127.0.0.1")
	if _, err := a.Write(bytes.Join([][]byte{initiation(), peerUp(1), peerUp(2), routeMonitoring(3, 1)}, nil)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the old session's messages spooled", func() bool { return spool.len() == 4 })
	b := dialFrom(t, st.addr, "127.0.0.1")
	if _, err := b.Write(bytes.Join([][]byte{initiation(), peerUp(1), routeMonitoring(3, 2)}, nil)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the new session's messages spooled", func() bool { return spool.len() == 7 })

	// The old session ends; its synthetic peer-down waits in the spool's
	// append, and the new session announces peer 2 meanwhile.
	tried := spool.attempts.Load()
	if err := a.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the old session's last append", func() bool { return spool.attempts.Load() > tried })
	if _, err := b.Write(peerUp(2)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the new session waiting, or ahead", func() bool {
		return st.metric(t, "bgpedge_bmp_session_order_waits_total") == 1 || spool.len() == 8
	})
	close(spool.holdSynthetic)
	testenv.Eventually(t, 10*time.Second, "both spooled", func() bool { return spool.len() == 9 })
	recs := spool.snapshot()
	if r := recs[7]; r.Kind != record.KindBMPSyntheticPeerDown || r.Source != a.LocalAddr().String() || !bytes.Equal(r.Payload, peerHeader(2)) {
		t.Fatalf("record 8: %v from %s %x, want the old session's synthetic peer-down of peer 2 (and nothing else of it)", r.Kind, r.Source, r.Payload)
	}
	if r := recs[8]; r.Kind != record.KindBMP || r.Source != b.LocalAddr().String() || !bytes.Equal(r.Payload, peerUp(2)) {
		t.Fatalf("record 9: %v from %s, want the new session's Peer Up of peer 2 after the old session's peer-down", r.Kind, r.Source)
	}

	// The new session ends: its three peers go down.
	if err := b.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the new session's synthetic peer-downs", func() bool { return spool.len() == 12 })
	for _, r := range spool.snapshot()[9:] {
		if r.Kind != record.KindBMPSyntheticPeerDown || r.Source != b.LocalAddr().String() {
			t.Fatalf("after the new session: %v from %s", r.Kind, r.Source)
		}
	}
	if v := st.metric(t, "bgpedge_bmp_synthetic_peer_downs_total"); v != 4 {
		t.Errorf("synthetic peer-downs %v, want 4", v)
	}
}

// TestAppendFailureRetried makes the spool fail (as on a full disk) and
// checks the session keeps its data, retries, stays open and delivers all.
func TestAppendFailureRetried(t *testing.T) {
	failures := 5
	spool := &memSpool{}
	spool.fail = func() error {
		if failures > 0 {
			failures--
			return errors.New("no space left on device")
		}
		return nil
	}
	st := startStation(t, spool, nil)
	c := dialFrom(t, st.addr, "")
	sent := [][]byte{initiation(), peerUp(1)}
	for i := range 100 {
		sent = append(sent, routeMonitoring(1, i))
	}
	c.Write(bytes.Join(sent, nil))
	testenv.Eventually(t, 10*time.Second, "station state", func() bool { return spool.len() == len(sent) })
	if st.l.ActiveSessions() != 1 {
		t.Fatal("session closed after append failures")
	}
	if v := st.metric(t, "bgpedge_bmp_append_errors_total"); v != 5 {
		t.Errorf("append errors %v, want 5", v)
	}
	// Still working afterwards.
	c.Write(routeMonitoring(1, 1000))
	testenv.Eventually(t, 10*time.Second, "station state", func() bool { return spool.len() == len(sent)+1 })
	got := bySource(spool.snapshot(), c.LocalAddr().String())
	for i := range sent {
		if !bytes.Equal(got[i], sent[i]) {
			t.Fatalf("message %d differs", i)
		}
	}
}

// TestBackpressure blocks the spool and checks that the session stops
// reading (the router's writes eventually block) and resumes losslessly.
func TestBackpressure(t *testing.T) {
	spool := &memSpool{gate: make(chan struct{})}
	st := startStation(t, spool, func(c *Config) { c.ReadBufferBytes = 64 << 10 })
	c := dialFrom(t, st.addr, "")
	c.SetWriteBuffer(64 << 10)

	msg := routeMonitoring(1, 7)
	chunk := bytes.Repeat(msg, (256<<10)/len(msg))
	sent := 0
	blocked := false
	for range 200 { // up to ~50 MiB; the kernel buffers far less
		c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Write(chunk)
		sent += n
		if err != nil {
			blocked = true
			break
		}
	}
	if !blocked {
		t.Fatal("writes never blocked while the spool was blocked")
	}
	if sent%len(msg) != 0 { // finish the partial message
		c.SetWriteDeadline(time.Time{})
		rest := len(msg) - sent%len(msg)
		go c.Write(msg[len(msg)-rest:])
		sent += rest
	}
	t.Logf("router blocked after %d bytes", sent)
	close(spool.gate) // spool accepts again
	want := sent / len(msg)
	testenv.Eventually(t, 10*time.Second, "station state", func() bool { return spool.len() == want })
	if st.metric(t, "bgpedge_bmp_append_duration_seconds") == 0 {
		t.Error("no append latency observed")
	}
}

// TestShutdownDeadlineCountsDropped closes the listener while the spool
// refuses everything: Close returns at its deadline and the loss is counted.
func TestShutdownDeadlineCountsDropped(t *testing.T) {
	spool := &memSpool{gate: make(chan struct{})}
	st := startStation(t, spool, nil)
	c := dialFrom(t, st.addr, "")
	c.Write(bytes.Join([][]byte{initiation(), peerUp(1), routeMonitoring(1, 1)}, nil))
	testenv.Eventually(t, 10*time.Second, "an append attempt", func() bool { return spool.attempts.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := st.l.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("close: %v, want deadline exceeded", err)
	}
	if v := st.metric(t, "bgpedge_bmp_messages_dropped_total"); v != 3 {
		t.Errorf("dropped %v, want 3", v)
	}
	if v := st.metric(t, "bgpedge_bmp_sessions_closed_total", "reason", CloseSpoolFailed); v != 1 {
		t.Errorf("closed{spool-failed} %v", v)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // substring of the error, "" for valid
	}{
		{"default", func(*Config) {}, ""},
		{"allow prefixes and hosts", func(c *Config) { c.Allow = []string{"192.0.2.0/24", "2001:db8::1", "10.0.0.1"} }, ""},
		{"bad listen", func(c *Config) { c.Listen = "11019" }, "bmp.listen:"},
		{"bad allow", func(c *Config) { c.Allow = []string{"10.0.0.0/8", "nope"} }, "bmp.allow[1]:"},
		{"max message too small", func(c *Config) { c.MaxMessageBytes = 5 }, "bmp.max_message_bytes: must be between 6 and 16777216"},
		{"max message too large", func(c *Config) { c.MaxMessageBytes = 1 << 30 }, "bmp.max_message_bytes:"},
		{"no sessions", func(c *Config) { c.MaxSessions = 0 }, "bmp.max_sessions:"},
		{"tiny read buffer", func(c *Config) { c.ReadBufferBytes = 1024 }, "bmp.read_buffer_bytes:"},
		{"negative rcvbuf", func(c *Config) { c.SocketReceiveBufferBytes = -1 }, "bmp.socket_receive_buffer_bytes:"},
		{"no batch", func(c *Config) { c.BatchMessages = 0 }, "bmp.batch_messages:"},
		{"keepalive too short", func(c *Config) { c.TCPKeepalive = time.Millisecond }, "bmp.tcp_keepalive:"},
		{"keepalive off", func(c *Config) { c.TCPKeepalive = 0 }, ""},
		{"no initiation timeout", func(c *Config) { c.InitiationTimeout = 0 }, "bmp.initiation_timeout:"},
		{"negative idle", func(c *Config) { c.IdleTimeout = -time.Second }, "bmp.idle_timeout:"},
		{"budget below max message", func(c *Config) { c.BufferBudgetBytes = c.MaxMessageBytes - 1 }, "bmp.buffer_budget_bytes:"},
		{"budget below read buffer", func(c *Config) {
			c.MaxMessageBytes = 64 << 10
			c.ReadBufferBytes = 1 << 20
			c.BufferBudgetBytes = 512 << 10
		}, "bmp.buffer_budget_bytes:"},
		{"zero partial timeout", func(c *Config) { c.PartialTimeout = 0 }, "bmp.partial_timeout:"},
		{"negative partial timeout", func(c *Config) { c.PartialTimeout = -time.Second }, "bmp.partial_timeout:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want))):
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestListenerMetricsLint checks metric names and help against Prometheus conventions.
func TestListenerMetricsLint(t *testing.T) {
	st := startStation(t, &memSpool{}, nil)
	problems, err := testutil.GatherAndLint(st.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}
