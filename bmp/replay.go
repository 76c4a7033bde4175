package bmp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bgpedge/bgpedge/bmp/capture"
)

// ReplayOptions says what to send where. See Replay.
type ReplayOptions struct {
	// Streams are the router byte streams to send, e.g. from LoadReplayFile.
	Streams [][]byte
	// Target is the station's host:port.
	Target string
	// Rate limits the total messages per second over all sessions; 0 sends
	// as fast as the station reads.
	Rate float64
	// Loop sends each stream this many times over its session (0 means 1).
	Loop int
	// Sessions opens this many copies of every stream at once (0 means 1).
	// On a loopback target each connection binds its own source address
	// (loopbackSource), so the station sees distinct routers.
	Sessions int
	// DrainTimeout, if positive, waits after sending for the station to close
	// each connection (a bgpedge station does so once it has spooled the
	// session), so Replay returns when the data is durable at the station.
	DrainTimeout time.Duration
	// Progress, if set, is called about every 200 ms and once at the end
	// with the messages sent so far and the total to send.
	Progress func(sent, total uint64)
}

// ReplayStats reports a replay.
type ReplayStats struct {
	Sessions int
	Messages uint64
	Bytes    uint64
	Duration time.Duration
}

// MessagesPerSecond is the replay's average send rate.
func (s ReplayStats) MessagesPerSecond() float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.Messages) / s.Duration.Seconds()
}

// LoadReplayFile reads a raw BMP stream file (gzip allowed) or a pcap/pcapng
// capture, whose TCP flows become one stream per router connection.
func LoadReplayFile(path string) ([][]byte, error) {
	streams, err := capture.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bmp: replay: %w", err)
	}
	out := make([][]byte, 0, len(streams))
	for _, s := range streams {
		if len(s.Data) > 0 {
			out = append(out, s.Data)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("bmp: replay: %s: %w", path, capture.ErrNotBMP)
	}
	return out, nil
}

// replayStream is one stream cut at message boundaries.
type replayStream struct {
	data []byte
	ends []int // offset just past each whole message
}

// maxLoopbackSessions is how many distinct source addresses loopbackSource
// provides: 127.0.0.10–254, then every x.y.1–254 of 127.0.1.0 to
// 127.255.255.255 (no .0 or .255 host octet, which some stations treat as
// network or broadcast addresses).
const maxLoopbackSessions = 245 + (1<<16-1)*254

// loopbackSource is the source address of connection i of a multi-session
// loopback replay: 127.0.0.10 for the first, as before thousands of
// sessions were possible, so small replays keep their addresses.
func loopbackSource(i int) net.IP {
	if i < 245 {
		return net.IPv4(127, 0, 0, byte(10+i))
	}
	i -= 245
	block, host := i/254+1, i%254+1 // block 1 is 127.0.1.0/24
	return net.IPv4(127, byte(block>>8), byte(block), byte(host))
}

// Replay sends the streams to a BMP station over TCP and returns what was
// sent. Trailing bytes that do not form a whole message are not sent.
func Replay(ctx context.Context, o ReplayOptions) (ReplayStats, error) {
	if len(o.Streams) == 0 {
		return ReplayStats{}, errors.New("bmp: replay: nothing to send")
	}
	loops, copies := max(o.Loop, 1), max(o.Sessions, 1)
	streams := make([]replayStream, len(o.Streams))
	var total uint64
	for i, data := range o.Streams {
		rs, err := cutMessages(data)
		if err != nil {
			return ReplayStats{}, fmt.Errorf("bmp: replay: stream %d: %w", i, err)
		}
		streams[i] = rs
		total += uint64(len(rs.ends)) * uint64(loops) * uint64(copies)
	}
	nconn := copies * len(streams)
	dialer, err := replayDialer(o.Target, nconn)
	if err != nil {
		return ReplayStats{}, err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var sentMsgs, sentBytes atomic.Uint64
	progressDone := make(chan struct{})
	if o.Progress != nil {
		go func() {
			defer close(progressDone)
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					o.Progress(sentMsgs.Load(), total)
				case <-ctx.Done():
					return
				}
			}
		}()
	} else {
		close(progressDone)
	}

	// Connect everything first, so the sessions really run concurrently.
	conns := make([]net.Conn, nconn)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	for i := range conns {
		c, err := dialer(ctx, i)
		if err != nil {
			closeAll()
			return ReplayStats{}, fmt.Errorf("bmp: replay: connect: %w", err)
		}
		conns[i] = c
	}
	perConnRate := o.Rate / float64(nconn)

	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, nconn)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			rs := &streams[i%len(streams)]
			for range loops {
				if err := sendStream(ctx, c, rs, perConnRate, &sentMsgs, &sentBytes); err != nil {
					errs[i] = err
					cancel() // one failed session fails the replay: stop the others
					return
				}
			}
			if o.DrainTimeout > 0 {
				errs[i] = awaitClose(c, o.DrainTimeout)
			}
		}()
	}
	wg.Wait()
	stats := ReplayStats{Sessions: nconn, Messages: sentMsgs.Load(), Bytes: sentBytes.Load(), Duration: time.Since(start)}
	cancel()
	<-progressDone
	if o.Progress != nil {
		o.Progress(stats.Messages, total)
	}
	if err := errors.Join(errs...); err != nil {
		return stats, fmt.Errorf("bmp: replay: %w", err)
	}
	return stats, nil
}

// cutMessages finds message boundaries with the same framing rules the
// station applies (at the largest allowed message size).
func cutMessages(data []byte) (replayStream, error) {
	rs := replayStream{data: data}
	off := 0
	for len(data)-off >= HeaderLen {
		n, err := CheckHeader(data[off:], MaxMessageBytesLimit)
		if err != nil {
			return rs, fmt.Errorf("at byte %d: %w", off, err)
		}
		if len(data)-off < n {
			break
		}
		off += n
		rs.ends = append(rs.ends, off)
	}
	rs.data = data[:off]
	return rs, nil
}

// sendChunk bounds one write: large enough to keep the socket busy, small
// enough that rate pacing and progress stay smooth.
const sendChunk = 256 << 10

func sendStream(ctx context.Context, c net.Conn, rs *replayStream, rate float64, msgs, bytes *atomic.Uint64) error {
	// A write blocked by a station applying backpressure does not see ctx:
	// an expired write deadline unblocks it when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = c.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	sent, off := 0, 0
	for sent < len(rs.ends) {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Take whole messages up to the chunk size (at least one).
		last := sent
		for last < len(rs.ends) && (last == sent || rs.ends[last]-off <= sendChunk) {
			last++
		}
		if rate > 0 {
			// At most ~10 ms of messages per write, then wait for the schedule.
			last = min(last, sent+max(1, int(rate/100)))
			due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				}
			}
		}
		end := rs.ends[last-1]
		if _, err := c.Write(rs.data[off:end]); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		msgs.Add(uint64(last - sent))
		bytes.Add(uint64(end - off))
		sent, off = last, end
	}
	return nil
}

// awaitClose half-closes the connection and waits for the station to close
// its side, which a bgpedge station does after spooling everything it read.
func awaitClose(c net.Conn, timeout time.Duration) error {
	// Only an orderly close says the station read and spooled the whole
	// session; a reset, seen here or already by CloseWrite, means it
	// aborted, and what it kept is unknown.
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.CloseWrite(); err != nil {
			return fmt.Errorf("station aborted the session instead of closing it: %w", err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, c)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("station did not close the session within %v", timeout)
	case err != nil:
		return fmt.Errorf("station aborted the session instead of closing it: %w", err)
	}
	return nil
}

// replayDialer returns a function that opens connection i. On a loopback
// target with more than one connection, each binds loopbackSource(i).
func replayDialer(target string, n int) (func(ctx context.Context, i int) (net.Conn, error), error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("bmp: replay: target %q: %w", target, err)
	}
	loopback := host == "localhost"
	if a, err := netip.ParseAddr(host); err == nil {
		loopback = a.Unmap().Is4() && a.IsLoopback()
	}
	if n > 1 && loopback && n > maxLoopbackSessions {
		return nil, fmt.Errorf("bmp: replay: at most %d loopback sessions (distinct source addresses in 127.0.0.0/8)", maxLoopbackSessions)
	}
	return func(ctx context.Context, i int) (net.Conn, error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		if n > 1 && loopback {
			d.LocalAddr = &net.TCPAddr{IP: loopbackSource(i)}
		}
		network := "tcp"
		if loopback {
			network = "tcp4"
		}
		return d.DialContext(ctx, network, target)
	}, nil
}
