package bmp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestReplayCapturesIntoSpool replays every shared capture over TCP into a
// listener backed by a real buffer spool and checks that the spool holds as
// many messages of each type as an independent count: tshark for packet
// captures, a plain length walk for raw streams.
func TestReplayCapturesIntoSpool(t *testing.T) {
	dir := testenv.Shared(t, "bmpdata")
	files := testenv.BMPCaptures(t, 20)
	tshark := testenv.Binary(t, "tshark", "tshark")
	for _, file := range files {
		rel, _ := filepath.Rel(dir, file)
		t.Run(rel, func(t *testing.T) {
			streams, err := capture.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			var want map[int]int
			if streams[0].Dst.IsValid() {
				var v4 bool
				want, v4 = tsharkTypes(t, tshark, file, streams)
				if v4 {
					// tshark 4.0 stops dissecting BMP version 4 (draft) messages
					// that span TCP segments; count the reassembled streams by
					// length walk, and require tshark's partial view to agree.
					partial := want
					want = map[int]int{}
					for _, s := range streams {
						for typ, n := range walkTypes(t, s.Data) {
							want[typ] += n
						}
					}
					for typ, n := range partial {
						if n > want[typ] {
							t.Fatalf("tshark counts %d messages of type %d, the stream walk %d", n, typ, want[typ])
						}
					}
				}
			} else {
				want = walkTypes(t, streams[0].Data)
			}
			if strings.HasPrefix(filepath.Base(file), "gobgp-3.10-all-dump-100k") {
				if n := sum(want); n != 300006 {
					t.Fatalf("independent count %d, the capture is known to hold 300,006 messages", n)
				}
			}

			sp := openRealSpool(t)
			st := startListener(t, sp, nil)
			data := make([][]byte, len(streams))
			for i, s := range streams {
				data[i] = s.Data
			}
			stats, err := Replay(context.Background(), ReplayOptions{Streams: data, Target: st.addr, DrainTimeout: 60 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			got := countTypes(readAllRecords(t, sp))
			if !maps.Equal(got, want) {
				t.Fatalf("spooled per type %v, independent count %v", got, want)
			}
			if uint64(sum(got)) != stats.Messages {
				t.Fatalf("spooled %d, replay reports %d sent", sum(got), stats.Messages)
			}
			t.Logf("%d streams, %d messages per type %v", len(streams), sum(got), got)
		})
	}
}

// TestReplayOptions checks loops, concurrent sessions from distinct loopback
// addresses and rate limiting.
func TestReplayOptions(t *testing.T) {
	stream := bytes.Join([][]byte{initiation(), peerUp(1), routeMonitoring(1, 1), routeMonitoring(1, 2)}, nil)
	spool := &memSpool{}
	st := startStation(t, spool, nil)
	var lastSent, lastTotal uint64
	stats, err := Replay(context.Background(), ReplayOptions{
		Streams:      [][]byte{stream, append(stream, 3, 0)}, // trailing partial header is not sent
		Target:       st.addr,
		Loop:         3,
		Sessions:     4,
		Rate:         200,
		DrainTimeout: 10 * time.Second,
		Progress:     func(sent, total uint64) { lastSent, lastTotal = sent, total },
	})
	if err != nil {
		t.Fatal(err)
	}
	const want = 2 * 4 * 3 * 4 // streams × sessions × loops × messages
	spooled := sum(countTypes(spool.snapshot()))
	if stats.Messages != want || stats.Sessions != 8 || spooled != want || lastSent != want || lastTotal != want {
		t.Fatalf("stats %+v, spooled %d, progress %d/%d; want %d", stats, spooled, lastSent, lastTotal, want)
	}
	// 96 messages at 200/s take about half a second; well above zero, well below unpaced.
	if stats.Duration < 300*time.Millisecond {
		t.Errorf("rate not applied: %v", stats.Duration)
	}
	sources := map[string]bool{}
	for _, r := range spool.snapshot() {
		sources[string(r.Key)] = true
	}
	if len(sources) != 8 {
		t.Errorf("routers seen %v, want 8 distinct loopback addresses", slices.Sorted(maps.Keys(sources)))
	}
}

// walkTypes counts messages per type by walking length fields, independently of Framer.
func walkTypes(t testing.TB, data []byte) map[int]int {
	t.Helper()
	out := map[int]int{}
	for off := 0; off < len(data); {
		if len(data)-off < 6 || data[off] != 3 && data[off] != 4 {
			t.Fatalf("raw stream not BMP at byte %d", off)
		}
		n := int(binary.BigEndian.Uint32(data[off+1 : off+5]))
		if n < 6 || off+n > len(data) {
			t.Fatalf("raw stream: bad length %d at byte %d", n, off)
		}
		out[int(data[off+5])]++
		off += n
	}
	return out
}

// tsharkTypes has tshark decode the capture as BMP on the collector ports of
// the streams found, and counts bmp.type values. It also reports whether any
// message had BMP version 4.
func tsharkTypes(t testing.TB, tshark, file string, streams []capture.Stream) (map[int]int, bool) {
	t.Helper()
	args := []string{"-r", file, "-T", "fields", "-e", "bmp.type", "-e", "bmp.version"}
	ports := map[uint16]bool{}
	for _, s := range streams {
		if !ports[s.Dst.Port()] {
			ports[s.Dst.Port()] = true
			args = append(args, "-d", fmt.Sprintf("tcp.port==%d,bmp", s.Dst.Port()))
		}
	}
	cmd := exec.Command(tshark, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark: %v: %s", err, stderr.String())
	}
	counts := map[int]int{}
	v4 := false
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		types, versions, _ := strings.Cut(line, "\t")
		v4 = v4 || strings.Contains(versions, "4")
		for _, f := range strings.Split(types, ",") {
			if f == "" {
				continue
			}
			v, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("tshark output %q: %v", line, err)
			}
			counts[v]++
		}
	}
	return counts, v4
}

func sum(m map[int]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestReplayDrainFailsOnAbort: with DrainTimeout, only an orderly close by
// the station counts as delivered. A station that reads the whole stream but
// then aborts (RST) has not said it spooled anything, so the replay fails.
func TestReplayDrainFailsOnAbort(t *testing.T) {
	stream := bytes.Join([][]byte{initiation(), peerUp(1), routeMonitoring(1, 1)}, nil)
	for _, abort := range []bool{false, true} {
		t.Run(fmt.Sprintf("abort=%v", abort), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				if _, err := io.ReadFull(c, make([]byte, len(stream))); err != nil {
					return
				}
				if abort {
					_ = c.(*net.TCPConn).SetLinger(0) // Close sends RST
					return
				}
				_, _ = io.Copy(io.Discard, c) // up to the sender's FIN
			}()
			_, err = Replay(t.Context(), ReplayOptions{Streams: [][]byte{stream}, Target: ln.Addr().String(), DrainTimeout: 10 * time.Second})
			if abort && (err == nil || !strings.Contains(err.Error(), "aborted")) {
				t.Fatalf("replay into an aborting station: %v, want an error saying it aborted", err)
			}
			if !abort && err != nil {
				t.Fatalf("replay into a station that closes: %v", err)
			}
		})
	}
}

// TestReplayStopsOnCancelWhileBlocked: a station that stops reading blocks
// the writes; cancelling the context still ends Replay promptly.
func TestReplayStopsOnCancelWhileBlocked(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c // never read: the sender's writes fill the socket buffers and block
		}
	}()
	var stream []byte
	stream = append(stream, initiation()...)
	for i := range 200000 {
		stream = append(stream, routeMonitoring(1, i)...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Progress is reported about every 200 ms: reports that repeat the same
	// non-zero count say the writes stopped moving.
	var last atomic.Uint64
	var unchanged atomic.Int32
	go func() {
		_, err := Replay(ctx, ReplayOptions{Streams: [][]byte{stream}, Target: ln.Addr().String(),
			Progress: func(n, _ uint64) {
				if n > 0 && last.Swap(n) == n {
					unchanged.Add(1)
				} else {
					unchanged.Store(0)
				}
			}})
		done <- err
	}()
	c := <-accepted
	defer c.Close()
	testenv.Eventually(t, 10*time.Second, "writes blocked on the full socket", func() bool { return unchanged.Load() >= 2 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Replay: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Replay did not return after cancel: a blocked write ignores the context")
	}
}

func TestLoopbackSource(t *testing.T) {
	for _, tt := range []struct {
		i    int
		want string
	}{
		{0, "127.0.0.10"},
		{244, "127.0.0.254"},
		{245, "127.0.1.1"},
		{245 + 253, "127.0.1.254"},
		{245 + 254, "127.0.2.1"},
		{245 + 255*254, "127.1.0.1"},
		{maxLoopbackSessions - 1, "127.255.255.254"},
	} {
		if got := loopbackSource(tt.i).String(); got != tt.want {
			t.Errorf("loopbackSource(%d) = %s, want %s", tt.i, got, tt.want)
		}
	}
	seen := map[string]bool{}
	for i := range 200000 {
		ip := loopbackSource(i).To4()
		if ip[0] != 127 || ip[3] == 0 || ip[3] == 255 || seen[string(ip)] {
			t.Fatalf("loopbackSource(%d) = %s: not a new 127/8 host address", i, ip)
		}
		seen[string(ip)] = true
	}
	if _, err := replayDialer("127.0.0.1:1", maxLoopbackSessions+1); err == nil {
		t.Error("more sessions than loopback source addresses accepted")
	}
}

// TestReplayManySessions opens more sessions than 127.0.0.10–254 holds: the
// station sees each from an address of its own.
func TestReplayManySessions(t *testing.T) {
	const sessions = 300
	stream := bytes.Join([][]byte{initiation(), peerUp(1), routeMonitoring(1, 1)}, nil)
	spool := &memSpool{}
	st := startStation(t, spool, nil)
	stats, err := Replay(context.Background(), ReplayOptions{
		Streams: [][]byte{stream}, Target: st.addr, Sessions: sessions, DrainTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]bool{}
	for _, r := range spool.snapshot() {
		sources[string(r.Key)] = true
	}
	if stats.Sessions != sessions || len(sources) != sessions {
		t.Fatalf("%d sessions sent, %d routers seen; want %d", stats.Sessions, len(sources), sessions)
	}
}
