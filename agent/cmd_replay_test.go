package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// replaySummary parses the summary line of `replay --reconnect`.
func replaySummary(t *testing.T, out string) (messages uint64, sessions, reconnects int) {
	t.Helper()
	m := regexp.MustCompile(`sent (\d+) messages \(\d+ bytes\) in (\d+) sessions in .*, (\d+) reconnects\n`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no summary line in %q", out)
	}
	messages, _ = strconv.ParseUint(m[1], 10, 64)
	sessions, _ = strconv.Atoi(m[2])
	reconnects, _ = strconv.Atoi(m[3])
	return messages, sessions, reconnects
}

func startStation(t *testing.T, addr string, sp *buffer.Spool) *bmp.Listener {
	t.Helper()
	cfg := bmp.DefaultConfig()
	cfg.Listen = addr
	l, err := bmp.NewListener(cfg, sp, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	return l
}

// A BMP station that goes away mid-session and comes back on the same
// address: `replay --reconnect` waits, connects again and sends the whole
// stream again from its first message, as a router re-establishing its BMP
// session does, and ends normally once that attempt is complete.
func TestReplayReconnectsToRestartedStation(t *testing.T) {
	capture := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10.0-loopback.bmp")
	streams, err := bmp.LoadReplayFile(capture)
	if err != nil || len(streams) != 1 {
		t.Fatalf("load %s: %d streams, %v", capture, len(streams), err)
	}
	var msgs [][]byte
	for b := streams[0]; len(b) >= 6; {
		n := int(binary.BigEndian.Uint32(b[1:5]))
		msgs = append(msgs, b[:n])
		b = b[n:]
	}
	const loops = 40
	var want [][]byte // one complete session
	for range loops {
		want = append(want, msgs...)
	}

	sp, err := buffer.Open(buffer.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	first := startStation(t, "127.0.0.1:0", sp)
	addr := first.Addr().String()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut testenv.LogBuffer
	done := make(chan int, 1)
	// About five seconds per complete session: slow enough to stop the
	// station in the middle of the first one, even on a loaded machine.
	rate := strconv.Itoa(len(want) / 5)
	go func() {
		done <- Main(ctx, []string{"replay", "--file", capture, "--to", addr, "--loop", strconv.Itoa(loops),
			"--rate", rate, "--reconnect", "20ms", "--drain", "20s"}, strings.NewReader(""), &out, &errOut)
	}()
	testenv.Eventually(t, 30*time.Second, "first session spooled a part of the stream", func() bool {
		return sp.Stats().LastSeq >= uint64(len(msgs))
	})
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// While nothing listens the replay is refused and keeps trying.
	testenv.Eventually(t, 30*time.Second, "replay reports the lost session", func() bool {
		return strings.Contains(errOut.String(), "reconnecting every 20ms")
	})
	startStation(t, addr, sp)

	var code int
	select {
	case code = <-done:
	case <-ctx.Done():
		t.Fatalf("replay did not finish: %s%s", out.String(), errOut.String())
	}
	if code != 0 {
		t.Fatalf("replay exit %d: %s%s", code, out.String(), errOut.String())
	}
	sent, sessions, reconnects := replaySummary(t, out.String())
	if reconnects < 1 || sessions != 2 {
		t.Errorf("%d sessions over %d reconnects, want 2 sessions and at least one reconnect", sessions, reconnects)
	}

	// The spool: a prefix of the stream from the first session, its peers
	// marked down when the station closed, then the whole stream again.
	recs, err := sp.Read(ctx, 1, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var payloads [][]byte
	boundary := -1 // index in payloads where the second session starts
	for _, r := range recs {
		switch r.Kind {
		case record.KindBMP:
			payloads = append(payloads, r.Payload)
		case record.KindBMPSyntheticPeerDown:
			if boundary < 0 {
				boundary = len(payloads)
			}
		}
	}
	if boundary <= 0 || boundary >= len(want) {
		t.Fatalf("first session spooled %d of %d messages before its peers were marked down", boundary, len(want))
	}
	if uint64(len(payloads)) > sent {
		t.Errorf("%d messages spooled, but replay sent %d", len(payloads), sent)
	}
	check := func(what string, got [][]byte) {
		t.Helper()
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s: message %d differs from the capture's message %d", what, i, i%len(msgs))
			}
		}
	}
	check("first session", payloads[:boundary])
	second := payloads[boundary:]
	if len(second) != len(want) {
		t.Fatalf("second session spooled %d messages, want the whole stream, %d", len(second), len(want))
	}
	check("second session", second)
	t.Logf("first session: %d of %d messages spooled; second: all; replay sent %d over %d reconnects", boundary, len(want), sent, reconnects)
}

// Without a station, `replay --reconnect` keeps trying until interrupted,
// which ends it with the summary and success; without --reconnect it fails.
func TestReplayReconnectInterruptedAndPlainFailure(t *testing.T) {
	capture := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10.0-loopback.bmp")
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String() // nothing listens here once closed
	_ = l.Close()

	tests := []struct {
		name      string
		args      []string
		interrupt bool
		wantCode  int
		want      *regexp.Regexp // in stdout, or in stderr when wantCode != 0
	}{
		{"reconnect, interrupted", []string{"--reconnect", "10ms"}, true, 0,
			regexp.MustCompile(`^sent 0 messages \(0 bytes\) in 0 sessions in [0-9.]+s: 0 messages/s, \d+ reconnects\n$`)},
		{"no reconnect", nil, false, 1, regexp.MustCompile(`connect: .*refused`)},
		{"negative reconnect", []string{"--reconnect", "-1s"}, false, 1, regexp.MustCompile(`--reconnect must be ≥ 0`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out, errOut testenv.LogBuffer
			done := make(chan int, 1)
			args := append([]string{"replay", "--file", capture, "--to", closed}, tt.args...)
			go func() { done <- Main(ctx, args, strings.NewReader(""), &out, &errOut) }()
			if tt.interrupt {
				testenv.Eventually(t, 10*time.Second, "a refused attempt and a retry", func() bool {
					return strings.Contains(errOut.String(), "refused")
				})
				cancel()
			}
			code := <-done
			got := out.String()
			if tt.wantCode != 0 {
				got = errOut.String()
			}
			if code != tt.wantCode || !tt.want.MatchString(got) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %v", code, out.String(), errOut.String(), tt.wantCode, tt.want)
			}
			if n := strings.Count(errOut.String(), "reconnecting"); n > 1 {
				t.Errorf("%d reconnect messages for one unreachable station, want one:\n%s", n, errOut.String())
			}
		})
	}
}
