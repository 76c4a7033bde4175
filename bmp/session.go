package bmp

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/bgpedge/bgpedge/record"
)

// session is one router connection: a single goroutine reads, frames and
// spools its messages in order. While an append waits (the spool is full or
// failing) the session does not read, which is the intended backpressure.
type session struct {
	l      *Listener
	conn   net.Conn
	remote netip.AddrPort
	key    []byte // router IP, shared by every record of the session
	source string

	batch []record.Record
	// per-type counts of the batch being built, added to metrics per flush
	nMsgs  [numTypes]uint64
	nBytes [numTypes]uint64

	// peers that are up: the 42-byte per-peer header of their last Peer Up
	peers map[PeerKey][]byte

	messages   uint64
	bytes      uint64
	appendWarn bool // an append failure was logged for this session
}

func newSession(l *Listener, conn net.Conn, remote netip.AddrPort) *session {
	return &session{
		l:      l,
		conn:   conn,
		remote: remote,
		key:    []byte(remote.Addr().String()),
		source: remote.String(),
	}
}

func (s *session) run() {
	l := s.l
	started := time.Now()
	defer s.conn.Close()
	if tc, ok := s.conn.(*net.TCPConn); ok && l.cfg.SocketReceiveBufferBytes > 0 {
		_ = tc.SetReadBuffer(l.cfg.SocketReceiveBufferBytes)
	}
	l.log.Info("bmp session opened", "router", s.source)

	reason, detail := s.read()

	// Whatever was read is flushed, then the peers the router left up are
	// marked down, in the same append so they follow the session's last message.
	now := time.Now()
	for _, hdr := range s.peers {
		s.batch = append(s.batch, record.Record{
			Kind:    record.KindBMPSyntheticPeerDown,
			Key:     s.key,
			Time:    now,
			Source:  s.source,
			Payload: hdr,
		})
	}
	synthetic := len(s.peers)
	if !s.flush() {
		reason, detail = CloseSpoolFailed, "shutdown deadline passed before the spool accepted the last batch"
		synthetic = 0
	}
	l.m.syntheticDown.Add(float64(synthetic))
	l.m.closed.WithLabelValues(reason).Inc()
	attrs := []any{
		"router", s.source, "reason", reason, "messages", s.messages, "bytes", s.bytes,
		"synthetic_peer_downs", synthetic, "duration", time.Since(started).Round(time.Millisecond),
	}
	if detail != "" {
		attrs = append(attrs, "detail", detail)
	}
	l.log.Info("bmp session closed", attrs...)
}

// read frames and spools messages until the stream ends or fails, and says why.
// It returns with s.batch possibly non-empty; the caller flushes it.
func (s *session) read() (reason, detail string) {
	l := s.l
	maxBatch := l.cfg.BatchMessages
	_ = s.conn.SetReadDeadline(time.Now().Add(l.cfg.InitiationTimeout))

	// Allocate the framing buffer only once the router sends something, so
	// idle or hostile connections cost a goroutine and a socket, not a buffer.
	var first [HeaderLen]byte
	n, err := s.conn.Read(first[:])
	if n == 0 {
		return s.readFailure(err, true)
	}
	fr := NewFramer(io.MultiReader(bytes.NewReader(first[:n]), s.conn), l.cfg.MaxMessageBytes, l.cfg.ReadBufferBytes)
	initiated := false
	s.batch = make([]record.Record, 0, min(maxBatch, 1024))

	for {
		if initiated && l.cfg.IdleTimeout > 0 {
			_ = s.conn.SetReadDeadline(time.Now().Add(l.cfg.IdleTimeout))
		}
		msg, err := fr.Next() // may read: the batch is empty here
		if err != nil {
			return s.endOfStream(err, !initiated)
		}
		if !initiated {
			initiated = true
			_ = s.conn.SetReadDeadline(time.Time{})
		}
		s.add(msg)
		// Collect what is already buffered without reading, so the slices in
		// the batch stay valid until the append below returns.
		for len(s.batch) < maxBatch && fr.Buffered() {
			msg, err := fr.Next()
			if err != nil {
				return s.endOfStream(err, false)
			}
			s.add(msg)
		}
		if !s.flush() {
			return CloseSpoolFailed, "shutdown deadline passed before the spool accepted a batch"
		}
	}
}

func (s *session) endOfStream(err error, initiating bool) (reason, detail string) {
	var fe *FrameError
	if errors.As(err, &fe) {
		s.l.m.framingErrors.WithLabelValues(fe.Reason).Inc()
		return fe.Reason, fe.Detail
	}
	if errors.Is(err, io.EOF) {
		return CloseEOF, ""
	}
	return s.readFailure(err, initiating)
}

func (s *session) readFailure(err error, initiating bool) (reason, detail string) {
	switch {
	case s.l.closing.Load():
		return CloseShutdown, ""
	case errors.Is(err, io.EOF):
		return CloseEOF, ""
	case errors.Is(err, os.ErrDeadlineExceeded):
		if initiating {
			return CloseInitiationTimeout, "no whole message within " + s.l.cfg.InitiationTimeout.String()
		}
		return CloseIdleTimeout, "nothing received for " + s.l.cfg.IdleTimeout.String()
	case err == nil:
		return CloseReadError, "read returned no data"
	default:
		return CloseReadError, err.Error()
	}
}

func (s *session) add(msg []byte) {
	t := msg[5]
	switch MsgType(t) {
	case MsgPeerUp:
		if p, err := ParsePeerHeader(msg); err == nil {
			if s.peers == nil {
				s.peers = make(map[PeerKey][]byte)
			}
			// Copied: msg lives in the framer's buffer.
			s.peers[p.Key()] = bytes.Clone(msg[HeaderLen : HeaderLen+PerPeerHeaderLen])
		}
	case MsgPeerDown:
		if p, err := ParsePeerHeader(msg); err == nil {
			delete(s.peers, p.Key())
		}
	}
	i := typeIndex(t)
	s.nMsgs[i]++
	s.nBytes[i] += uint64(len(msg))
	s.batch = append(s.batch, record.Record{
		Kind:    record.KindBMP,
		Key:     s.key,
		Source:  s.source,
		Payload: msg,
	})
}

// flush appends the batch, retrying with backoff until the spool accepts it
// or the listener's shutdown deadline passes. It reports whether the batch
// was spooled; the batch is emptied either way.
func (s *session) flush() bool {
	if len(s.batch) == 0 {
		return true
	}
	l := s.l
	now := time.Now()
	for i := range s.batch {
		s.batch[i].Time = now
	}
	backoff := 10 * time.Millisecond
	ok := true
	for {
		_, err := l.spool.Append(l.appendCtx, s.batch...)
		if err == nil {
			break
		}
		if l.appendCtx.Err() != nil {
			ok = false
			break
		}
		l.m.appendErrors.Inc()
		if !s.appendWarn {
			s.appendWarn = true
			l.log.Error("bmp spool append failed; retrying without reading further", "router", s.source, "err", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-l.appendCtx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, time.Second)
	}
	l.m.appendSeconds.Observe(time.Since(now).Seconds())

	var msgs uint64
	for i := range numTypes {
		if s.nMsgs[i] == 0 {
			continue
		}
		msgs += s.nMsgs[i]
		if ok {
			l.m.messages[i].Add(float64(s.nMsgs[i]))
			l.m.bytes[i].Add(float64(s.nBytes[i]))
			s.bytes += s.nBytes[i]
		}
		s.nMsgs[i], s.nBytes[i] = 0, 0
	}
	if ok {
		s.messages += msgs
		if s.appendWarn {
			s.appendWarn = false
			l.log.Info("bmp spool append recovered", "router", s.source)
		}
	} else {
		l.m.dropped.Add(float64(msgs))
	}
	clear(s.batch) // drop references into the framer buffer
	s.batch = s.batch[:0]
	return ok
}
