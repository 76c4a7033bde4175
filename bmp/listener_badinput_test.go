package bmp

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestBadInputWhileGoodSessionStreams runs every kind of bad client against
// the station while one good router streams, and checks: each bad session is
// closed with its reason counted, what a bad session sent before its error is
// spooled, 1,000 idle connections cost bounded memory and are reaped by the
// initiation timeout, a refused address is refused, and the good session
// arrives complete and in order.
func TestBadInputWhileGoodSessionStreams(t *testing.T) {
	const idle = 1000
	raiseFileLimit(t, 2*idle+200)
	spool := &memSpool{}
	st := startStation(t, spool, func(c *Config) {
		c.Allow = []string{"127.0.0.1/32"}
		c.MaxSessions = idle + 100
		c.InitiationTimeout = 3 * time.Second
	})

	// The good router: 20,000 messages written in pieces throughout the test.
	good := [][]byte{initiation(), peerUp(1)}
	for i := range 20000 {
		good = append(good, routeMonitoring(1, i))
	}
	goodConn := dialFrom(t, st.addr, "127.0.0.1")
	goodDone := make(chan error, 1)
	go func() {
		all := bytes.Join(good, nil)
		for off := 0; off < len(all); {
			n := min(len(all)-off, 1500)
			if _, err := goodConn.Write(all[off : off+n]); err != nil {
				goodDone <- err
				return
			}
			off += n
		}
		goodDone <- goodConn.CloseWrite()
	}()

	// A client that connects and never sends, one that stalls inside the first header.
	silent := dialFrom(t, st.addr, "127.0.0.1")
	stalled := dialFrom(t, st.addr, "127.0.0.1")
	stalled.Write([]byte{3, 0, 0})

	// 1,000 idle connections, with the heap measured around them.
	before := heapInUse()
	conns := make([]net.Conn, 0, idle)
	for range idle {
		conns = append(conns, dialFrom(t, st.addr, "127.0.0.1"))
	}
	testenv.Eventually(t, 10*time.Second, "idle sessions accepted", func() bool {
		return st.metric(t, "bgpedge_bmp_sessions_accepted_total") >= idle+3
	})
	during := heapInUse()
	t.Logf("heap in use: %.1f MiB before, %.1f MiB with %d idle connections (%.1f KiB each); goroutines %d",
		mib(before.heap), mib(during.heap), idle, float64(during.heap-before.heap)/1024/idle, runtime.NumGoroutine())
	t.Logf("stack in use: %.1f MiB before, %.1f MiB during", mib(before.stack), mib(during.stack))
	if per := (during.heap + during.stack - before.heap - before.stack) / idle; per > 64<<10 {
		t.Errorf("an idle connection costs %d bytes of heap+stack; want a bounded few KiB", per)
	}

	// A refused address.
	refused := dialFrom(t, st.addr, "127.0.0.2")
	awaitStationClose(t, refused)

	// Framing errors, each on its own session; bytes valid before the error are spooled.
	lieLen := func(n uint32) []byte { return hdr(3, n, 0) }
	random := make([]byte, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(r.UintN(256))
	}
	random[0] = 0xA5 // not a version this station accepts
	tests := []struct {
		name      string
		send      []byte
		reason    string
		delivered int // whole messages before the bad bytes
	}{
		{"truncated message", append(initiation(), routeMonitoring(2, 1)[:30]...), ReasonTruncated, 1},
		{"length 5", append(initiation(), lieLen(5)...), ReasonShortLength, 1},
		{"length 4 GiB", append(initiation(), lieLen(0xFFFFFFFF)...), ReasonLongLength, 1},
		{"length just above max", lieLen(DefaultMaxMessageBytes + 1), ReasonLongLength, 0},
		{"wrong version", append(peerUp(9), hdr(2, 6, 4)...), ReasonBadVersion, 1},
		{"random bytes", random, ReasonBadVersion, 0},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ReasonBadVersion, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := st.metric(t, "bgpedge_bmp_sessions_closed_total", "reason", tt.reason)
			c := dialFrom(t, st.addr, "127.0.0.1")
			c.Write(tt.send)
			if tt.reason == ReasonTruncated {
				c.CloseWrite()
			}
			awaitStationClose(t, c)
			testenv.Eventually(t, 5*time.Second, "close counted", func() bool {
				return st.metric(t, "bgpedge_bmp_sessions_closed_total", "reason", tt.reason) == before+1
			})
			if got := len(bySource(spool.snapshot(), c.LocalAddr().String())); got != tt.delivered {
				t.Errorf("%d messages spooled before the error, want %d", got, tt.delivered)
			}
		})
	}

	// Idle and silent connections are reaped by the initiation timeout.
	testenv.Eventually(t, 15*time.Second, "idle connections reaped", func() bool {
		return st.metric(t, "bgpedge_bmp_sessions_closed_total", "reason", CloseInitiationTimeout) >= idle+2
	})
	awaitStationClose(t, silent)
	awaitStationClose(t, stalled)
	for _, c := range conns {
		c.Close()
	}

	if err := <-goodDone; err != nil {
		t.Fatalf("good router: %v", err)
	}
	awaitStationClose(t, goodConn)
	got := bySource(spool.snapshot(), goodConn.LocalAddr().String())
	if len(got) != len(good) {
		t.Fatalf("good session: %d of %d messages spooled", len(got), len(good))
	}
	for i := range good {
		if !bytes.Equal(got[i], good[i]) {
			t.Fatalf("good session: message %d differs", i)
		}
	}
	if v := st.metric(t, "bgpedge_bmp_sessions_refused_total", "reason", RefuseNotAllowed); v != 1 {
		t.Errorf("refused{not-allowed} = %v, want 1", v)
	}
	for _, reason := range []string{ReasonTruncated, ReasonShortLength, ReasonLongLength, ReasonBadVersion} {
		if st.metric(t, "bgpedge_bmp_framing_errors_total", "reason", reason) == 0 {
			t.Errorf("framing_errors{%s} not counted", reason)
		}
	}
	after := heapInUse()
	t.Logf("heap in use after the idle connections closed: %.1f MiB", mib(after.heap))
}

// TestMaxSessions refuses connections beyond max_sessions and accepts again
// once a session ends.
func TestMaxSessions(t *testing.T) {
	st := startStation(t, &memSpool{}, func(c *Config) { c.MaxSessions = 2 })
	a := dialFrom(t, st.addr, "")
	dialFrom(t, st.addr, "")
	testenv.Eventually(t, 5*time.Second, "two sessions", func() bool { return st.l.ActiveSessions() == 2 })
	third := dialFrom(t, st.addr, "")
	awaitStationClose(t, third)
	if v := st.metric(t, "bgpedge_bmp_sessions_refused_total", "reason", RefuseMaxSessions); v != 1 {
		t.Fatalf("refused{max-sessions} = %v", v)
	}
	a.Close()
	testenv.Eventually(t, 5*time.Second, "slot freed", func() bool { return st.l.ActiveSessions() == 1 })
	c := dialFrom(t, st.addr, "")
	c.Write(initiation())
	testenv.Eventually(t, 5*time.Second, "new session spooling", func() bool { return st.spool.len() == 1 })
}

// TestIdleTimeout closes a session that goes silent when idle_timeout is set.
func TestIdleTimeout(t *testing.T) {
	st := startStation(t, &memSpool{}, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	c := dialFrom(t, st.addr, "")
	c.Write(bytes.Join([][]byte{initiation(), peerUp(1)}, nil))
	awaitStationClose(t, c)
	if v := st.metric(t, "bgpedge_bmp_sessions_closed_total", "reason", CloseIdleTimeout); v != 1 {
		t.Fatalf("closed{idle-timeout} = %v", v)
	}
	// The peer left up is reported down.
	if v := st.metric(t, "bgpedge_bmp_synthetic_peer_downs_total"); v != 1 {
		t.Fatalf("synthetic peer downs = %v", v)
	}
}

type memUse struct{ heap, stack uint64 }

func heapInUse() memUse {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memUse{heap: ms.HeapInuse, stack: ms.StackInuse}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// raiseFileLimit raises the soft RLIMIT_NOFILE for tests that hold many sockets.
func raiseFileLimit(t testing.TB, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= need {
		return
	}
	if lim.Max < need {
		testenv.Missing(t, fmt.Sprintf("an open-file hard limit of %d (have %d)", need, lim.Max), "raise it with `ulimit -Hn` or in the CI runner")
	}
	old := lim.Cur
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lim.Cur = old
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	})
}
