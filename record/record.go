// Package record defines the unit of data that sources hand to the spool and
// the forwarder reads back: one event as received, before any decoding; and
// what comes out of it: Output, the one type every encoder emits, Stream,
// how a source declares the streams its encoder emits (name, default topic,
// raw or JSON), and the JSON event schema (Event).
//
// Decoding happens on the way out (in the forwarder's encoders), so ingest
// stays cheap and the spool holds exactly the bytes a router or exaBGP sent.
package record

import (
	"fmt"
	"time"
)

// Kind says what a record's payload is, and so which encoder reads it.
// Values are stored on disk: never renumber them.
type Kind uint8

const (
	// KindBMP is one whole BMP message as received from a router
	// (common header included). Source is the router's address, Key its IP.
	KindBMP Kind = 1
	// KindBMPSyntheticPeerDown marks a peer that was up on a BMP session that
	// ended without a Peer Down for it. Payload is the 42-byte BMP per-peer
	// header of that peer, as last seen on the session.
	KindBMPSyntheticPeerDown Kind = 2
	// KindExaBGP is one line read from exaBGP's process API (JSON event),
	// without the trailing newline. Source is "exabgp", Key the neighbor.
	KindExaBGP Kind = 3
	// KindRIBTimer is the route state's own control record (package rib):
	// a stale peer's bmp.rib.stale_timeout expired. Payload is the peer's
	// key and stale epoch; spooled so the withdraws it causes take their
	// place in spool order and are decided alike on every delivery.
	KindRIBTimer Kind = 4
)

// String is the stable, lowercase name used in logs, metrics and CLI output.
func (k Kind) String() string {
	switch k {
	case KindBMP:
		return "bmp"
	case KindBMPSyntheticPeerDown:
		return "bmp-synthetic-peer-down"
	case KindExaBGP:
		return "exabgp"
	case KindRIBTimer:
		return "rib-timer"
	default:
		return fmt.Sprintf("unknown-%d", uint8(k))
	}
}

// Record is one spooled event. Seq is assigned by the spool on Append and is
// strictly increasing, never reused, also across restarts; a source leaves it 0.
type Record struct {
	Seq     uint64
	Kind    Kind
	Key     []byte    // partitioning key: the router's IP for BMP, the neighbor for exaBGP
	Time    time.Time // when bgpedge received it
	Source  string    // router address or exaBGP neighbor, for humans and headers
	Payload []byte
}

// Size is the record's approximate footprint, used for batching and capacity.
func (r *Record) Size() int {
	return 8 + 1 + 8 + len(r.Key) + len(r.Source) + len(r.Payload)
}
