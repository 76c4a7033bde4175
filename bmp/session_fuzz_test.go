package bmp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

// FuzzFramer feeds arbitrary byte streams, in arbitrary read sizes, through
// the Framer the way a session drives it (batching while Buffered) and checks
// it against a plain reference walk: same messages, same error reason, no
// read while Buffered is true, and never a panic or an oversized allocation.
// Seeds are the real captures, read from the shared data at fuzz time.
func FuzzFramer(f *testing.F) {
	for _, data := range captureSeeds(f) {
		f.Add(data, uint16(1460), uint32(4096))
	}
	f.Add([]byte{3, 0, 0, 0, 5, 0}, uint16(1), uint32(64))
	f.Add([]byte{3, 0xff, 0xff, 0xff, 0xff, 0}, uint16(6), uint32(64))

	f.Fuzz(func(t *testing.T, stream []byte, readSize uint16, maxMsg uint32) {
		max := HeaderLen + int(maxMsg%(256<<10))
		r := &checkedReader{data: stream, size: int(readSize)%8192 + 1}
		fr := NewFramer(r, max, 0)
		r.fr = fr

		wantMsgs, wantReason := referenceWalk(stream, max)
		var batch [][]byte
		count := 0
		var err error
		flush := func() {
			// The session appends the batch here: its slices must still hold
			// the message bytes, even though earlier batches may be overwritten.
			for i, m := range batch {
				if count+i >= len(wantMsgs) || string(m) != string(wantMsgs[count+i]) {
					t.Fatalf("message %d differs from the reference", count+i)
				}
			}
			count += len(batch)
			batch = batch[:0]
		}
	loop:
		for {
			var msg []byte
			msg, err = fr.Next()
			if err != nil {
				break
			}
			batch = append(batch, msg)
			for fr.Buffered() {
				msg, err = fr.Next()
				if err != nil {
					break loop
				}
				batch = append(batch, msg)
			}
			flush()
		}
		flush()
		if count != len(wantMsgs) {
			t.Fatalf("framer returned %d messages, reference %d", count, len(wantMsgs))
		}
		var fe *FrameError
		switch {
		case errors.Is(err, io.EOF):
			if wantReason != "" {
				t.Fatalf("clean EOF, reference says %s", wantReason)
			}
		case errors.As(err, &fe):
			if fe.Reason != wantReason {
				t.Fatalf("reason %s, reference %s", fe.Reason, wantReason)
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
		if r.readWhileBuffered {
			t.Fatal("framer read from the socket while a whole message was buffered")
		}
	})
}

// referenceWalk frames a whole stream by its length fields, the obvious way.
func referenceWalk(b []byte, max int) (msgs [][]byte, reason string) {
	for len(b) > 0 {
		if len(b) < HeaderLen {
			return msgs, ReasonTruncated
		}
		if b[0] != 3 && b[0] != 4 {
			return msgs, ReasonBadVersion
		}
		n := binary.BigEndian.Uint32(b[1:5])
		switch {
		case n < HeaderLen:
			return msgs, ReasonShortLength
		case uint64(n) > uint64(max):
			return msgs, ReasonLongLength
		case int(n) > len(b):
			return msgs, ReasonTruncated
		}
		msgs = append(msgs, b[:n])
		b = b[n:]
	}
	return msgs, ""
}

// checkedReader serves a stream in fixed-size reads and notes a read made
// while the framer still had a whole message buffered.
type checkedReader struct {
	data              []byte
	size              int
	fr                *Framer
	readWhileBuffered bool
}

func (r *checkedReader) Read(p []byte) (int, error) {
	if r.fr != nil && r.fr.Buffered() {
		r.readWhileBuffered = true
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.size)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// FuzzSessionFraming drives a listener session, the framing that production
// uses (a buffer grown only as bytes arrive, drawing on the listener-wide
// budget), over arbitrary streams in arbitrary read sizes, and checks it
// against the reference walk: the same messages spooled in order, the same
// close reason counted, and every byte of budget and buffer given back.
func FuzzSessionFraming(f *testing.F) {
	for _, data := range captureSeeds(f) {
		f.Add(data, uint16(1460), uint32(4096), uint8(0))
	}
	f.Add([]byte{3, 0, 0, 0, 5, 0}, uint16(1), uint32(64), uint8(1))
	f.Add([]byte{3, 0xff, 0xff, 0xff, 0xff, 0}, uint16(6), uint32(64), uint8(2))
	f.Add(append(hdr(3, 40<<10, 4), make([]byte, 40<<10-HeaderLen)...), uint16(7), uint32(64<<10), uint8(3))

	f.Fuzz(func(t *testing.T, stream []byte, readSize uint16, maxMsg uint32, batch uint8) {
		cfg := DefaultConfig()
		cfg.MaxMessageBytes = HeaderLen + int(maxMsg%(256<<10))
		cfg.ReadBufferBytes = minReadBuffer
		cfg.BufferBudgetBytes = max(cfg.MaxMessageBytes, cfg.ReadBufferBytes)
		cfg.BatchMessages = int(batch)%64 + 1
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		checkSessionFraming(t, cfg, stream, int(readSize)%8192+1)
	})
}

// captureSeeds are the streams of every shared capture, each cut to its
// first 64 KiB so the seed corpus stays small (the cut tail is truncated on
// purpose: one more ending to test).
func captureSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, file := range testenv.BMPCaptures(f, 20) {
		streams, err := capture.Open(file)
		if err != nil {
			f.Fatalf("%s: %v", file, err)
		}
		for _, s := range streams {
			seeds = append(seeds, s.Data[:min(len(s.Data), 64<<10)])
		}
	}
	return seeds
}

// checkSessionFraming runs one session of a listener with cfg over stream,
// served in reads of readSize bytes, and checks it against the reference
// walk: the same messages spooled in order, the same close reason counted,
// and every byte of budget and buffer given back.
func checkSessionFraming(t testing.TB, cfg Config, stream []byte, readSize int) {
	t.Helper()
	spool := &memSpool{}
	reg := prometheus.NewRegistry()
	l, err := NewListener(cfg, spool, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	remote := netip.MustParseAddrPort("192.0.2.1:179")
	newSession(l, &chunkConn{data: stream, size: readSize}, remote).run()

	want, reason := referenceWalk(stream, cfg.MaxMessageBytes)
	if reason == "" {
		reason = CloseEOF
	}
	if got := gatherValue(t, reg, "bgpedge_bmp_sessions_closed_total", "reason", reason); got != 1 {
		t.Fatalf("closed{reason=%q} = %v, want 1", reason, got)
	}
	got := bySource(spool.snapshot(), remote.String())
	if len(got) != len(want) {
		t.Fatalf("%d messages spooled, reference %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("message %d differs from the reference", i)
		}
	}
	if u, b := l.budget.used.Load(), l.budget.total.Load(); u != 0 || b != 0 {
		t.Fatalf("after the session: budget used %d, buffers %d; want 0", u, b)
	}
}
