package bmp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Sizes from RFC 7854.
const (
	HeaderLen        = 6  // common header: version, length, type
	PerPeerHeaderLen = 42 // per-peer header of types 0, 1, 2, 3 and 6

	DefaultMaxMessageBytes = 1 << 20
	// MaxMessageBytesLimit caps the configurable maximum: no real message comes close.
	MaxMessageBytesLimit = 16 << 20
)

// MsgType is the BMP message type of the common header.
type MsgType uint8

// BMP message types (RFC 7854 §4.1).
const (
	MsgRouteMonitoring MsgType = 0
	MsgStatistics      MsgType = 1
	MsgPeerDown        MsgType = 2
	MsgPeerUp          MsgType = 3
	MsgInitiation      MsgType = 4
	MsgTermination     MsgType = 5
	MsgRouteMirroring  MsgType = 6

	// msgTypeUnknown stands for a message whose header does not check, so
	// its type byte means nothing.
	msgTypeUnknown MsgType = 255
)

func (t MsgType) String() string {
	switch t {
	case MsgRouteMonitoring:
		return "route-monitoring"
	case MsgStatistics:
		return "stats"
	case MsgPeerDown:
		return "peer-down"
	case MsgPeerUp:
		return "peer-up"
	case MsgInitiation:
		return "initiation"
	case MsgTermination:
		return "termination"
	case MsgRouteMirroring:
		return "route-mirroring"
	default:
		return "unknown"
	}
}

// HasPerPeerHeader reports whether messages of this type start with a per-peer header.
func (t MsgType) HasPerPeerHeader() bool {
	return t <= MsgPeerUp || t == MsgRouteMirroring
}

// FrameError is why a byte stream is not BMP. Reason is a short, fixed token
// usable as a metric label.
type FrameError struct {
	Reason string // bad-version, short-length, long-length, truncated
	Detail string
}

func (e *FrameError) Error() string { return "bmp framing: " + e.Reason + ": " + e.Detail }

// Framing failure reasons: the complete set of FrameError.Reason values.
const (
	ReasonBadVersion  = "bad-version"
	ReasonShortLength = "short-length"
	ReasonLongLength  = "long-length"
	ReasonTruncated   = "truncated"
)

// ErrShortHeader is returned by header parsers given fewer bytes than they need.
var ErrShortHeader = errors.New("bmp: message too short for its header")

// CheckHeader validates a common header against the framing rules: version 3
// (or 4, whose common header is the same), 6 ≤ length ≤ max. It returns the
// message length.
func CheckHeader(h []byte, max int) (int, error) {
	if len(h) < HeaderLen {
		return 0, ErrShortHeader
	}
	if h[0] != 3 && h[0] != 4 {
		return 0, &FrameError{Reason: ReasonBadVersion, Detail: fmt.Sprintf("version %d", h[0])}
	}
	n := binary.BigEndian.Uint32(h[1:5])
	if n < HeaderLen {
		return 0, &FrameError{Reason: ReasonShortLength, Detail: fmt.Sprintf("length %d below %d", n, HeaderLen)}
	}
	if uint64(n) > uint64(max) {
		return 0, &FrameError{Reason: ReasonLongLength, Detail: fmt.Sprintf("length %d above maximum %d", n, max)}
	}
	return int(n), nil
}

// Framer splits a byte stream into whole BMP messages without copying them.
//
// A slice returned by Next stays valid until a call to Next that has to read
// from the underlying reader; Buffered reports whether the next call can be
// served without reading. A session that batches messages (to append them to
// the spool in one call) flushes its batch when Buffered is false, so the
// bytes it holds are never overwritten under it.
type Framer struct {
	r     io.Reader
	max   int
	buf   []byte
	start int // first byte not yet returned
	end   int // end of valid data
}

// NewFramer reads from r with a buffer of bufSize bytes (grown when a single
// message needs more) and rejects messages longer than maxMessage.
func NewFramer(r io.Reader, maxMessage, bufSize int) *Framer {
	if bufSize < 64<<10 {
		bufSize = 64 << 10
	}
	return &Framer{r: r, max: maxMessage, buf: make([]byte, bufSize)}
}

// Buffered reports whether a whole message is already buffered.
func (f *Framer) Buffered() bool {
	avail := f.end - f.start
	if avail < HeaderLen {
		return false
	}
	n, err := CheckHeader(f.buf[f.start:f.end], f.max)
	return err != nil || n <= avail // an error is "buffered" too: Next returns it without reading
}

// Next returns the next whole message, header included. At a clean end of
// stream it returns io.EOF; a stream that ends inside a message gives a
// FrameError with ReasonTruncated; bytes that are not BMP give a FrameError.
func (f *Framer) Next() ([]byte, error) {
	for {
		avail := f.end - f.start
		if avail >= HeaderLen {
			n, err := CheckHeader(f.buf[f.start:f.end], f.max)
			if err != nil {
				return nil, err
			}
			if n <= avail {
				msg := f.buf[f.start : f.start+n : f.start+n]
				f.start += n
				return msg, nil
			}
			if n > len(f.buf) {
				grown := make([]byte, n)
				copy(grown, f.buf[f.start:f.end])
				f.buf, f.end, f.start = grown, avail, 0
			}
		}
		if err := f.fill(); err != nil {
			if errors.Is(err, io.EOF) {
				if f.end == f.start {
					return nil, io.EOF
				}
				return nil, &FrameError{Reason: ReasonTruncated, Detail: fmt.Sprintf("stream ended inside a message (%d bytes pending)", f.end-f.start)}
			}
			return nil, err
		}
	}
}

// fill reads more bytes, first moving pending bytes to the front of the buffer.
func (f *Framer) fill() error {
	if f.start > 0 {
		f.end = copy(f.buf, f.buf[f.start:f.end])
		f.start = 0
	}
	n, err := f.r.Read(f.buf[f.end:])
	f.end += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Peer types of the per-peer header (RFC 7854, RFC 9069).
const (
	PeerTypeGlobal        = 0
	PeerTypeRDInstance    = 1
	PeerTypeLocalInstance = 2
	PeerTypeLocRIB        = 3
)

// Per-peer header flags. In a Loc-RIB header 0x80 is F (filtered), not V.
const (
	FlagV = 0x80 // IPv6 peer address
	FlagL = 0x40 // post-policy
	FlagA = 0x20 // 2-byte AS_PATH
	FlagO = 0x10 // Adj-RIB-Out (RFC 8671)
	FlagF = 0x80 // Loc-RIB filtered (RFC 9069)
)

// PeerHeader is the per-peer header, decoded without allocation.
type PeerHeader struct {
	Type          uint8
	Flags         uint8
	Distinguisher [8]byte
	Address       netip.Addr
	AS            uint32
	BGPID         netip.Addr
	Timestamp     time.Time // zero when the router sent 0
}

// IPv6 reports whether the peer address is IPv6 (never for Loc-RIB, whose 0x80 is F).
func (p *PeerHeader) IPv6() bool { return p.Type != PeerTypeLocRIB && p.Flags&FlagV != 0 }

// PostPolicy reports the L flag.
func (p *PeerHeader) PostPolicy() bool { return p.Flags&FlagL != 0 }

// AdjRIBOut reports the O flag (RFC 8671; not defined for Loc-RIB).
func (p *PeerHeader) AdjRIBOut() bool { return p.Type != PeerTypeLocRIB && p.Flags&FlagO != 0 }

// TwoByteAS reports the A flag.
func (p *PeerHeader) TwoByteAS() bool { return p.Flags&FlagA != 0 }

// ParsePeerHeader decodes the per-peer header of a whole message (common header included).
func ParsePeerHeader(msg []byte) (PeerHeader, error) {
	var p PeerHeader
	if len(msg) < HeaderLen+PerPeerHeaderLen {
		return p, ErrShortHeader
	}
	b := msg[HeaderLen:]
	p.Type, p.Flags = b[0], b[1]
	copy(p.Distinguisher[:], b[2:10])
	if p.IPv6() {
		p.Address = netip.AddrFrom16([16]byte(b[10:26]))
	} else {
		p.Address = netip.AddrFrom4([4]byte(b[22:26]))
	}
	p.AS = binary.BigEndian.Uint32(b[26:30])
	p.BGPID = netip.AddrFrom4([4]byte(b[30:34]))
	sec, usec := binary.BigEndian.Uint32(b[34:38]), binary.BigEndian.Uint32(b[38:42])
	if sec != 0 || usec != 0 {
		p.Timestamp = time.Unix(int64(sec), int64(usec)*1000).UTC()
	}
	return p, nil
}

// PeerKey identifies a peer within one router session: type, distinguisher
// and address (RFC 7854 §4.2). It is comparable, for use as a map key.
type PeerKey struct {
	Type          uint8
	Distinguisher [8]byte
	Address       netip.Addr
}

// Key returns the peer's identity.
func (p *PeerHeader) Key() PeerKey {
	return PeerKey{Type: p.Type, Distinguisher: p.Distinguisher, Address: p.Address}
}
