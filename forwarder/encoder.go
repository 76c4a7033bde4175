package forwarder

import (
	"errors"
	"fmt"

	"github.com/bgpedge/bgpedge/record"
)

// Encoder turns a spooled record into output messages (record.Output, the
// one output type every encoder emits). An error sends the record, raw, to
// the dead-letter stream; messages emitted before the error are discarded.
type Encoder interface {
	Encode(rec record.Record, emit func(record.Output)) error
}

// Sequencer is implemented by an encoder (or the Encoder inside Parallel)
// whose outputs depend on state kept across records, such as the route
// state of package rib. That state must always equal what the acknowledged
// prefix of the spool produced, while the forwarder encodes ahead of acks and
// re-reads from the first unacknowledged record after a sink failure; so the
// forwarder tells it where each session starts and how far acks got.
type Sequencer interface {
	// Rewind is called at the start of every sink session with the first
	// seq it will read: changes made for records before from are
	// acknowledged, those from it on were not and are forgotten.
	Rewind(from uint64) error
	// Sequence sees every record's messages once per session, in spool
	// order, from one goroutine, and emits what is sent instead: it may
	// drop messages, change their Value or add messages. It keeps the Key
	// of a message it was passed: the key's hash, which picks the
	// partition, was taken as the message was encoded (checked in race
	// builds). A message it adds leaves ID and Headers empty (the
	// forwarder fills them) and sets an Index unique within the record.
	// emit fails once the session ends; Sequence then returns.
	// The messages' Key and Value bytes are reused once the sink
	// acknowledged them, which can happen before emit returns (a long
	// expansion is handed to the sink in parts while Sequence runs):
	// nothing of a message is read once it is passed to emit, a message
	// Sequence adds that points into another's bytes calls Share before
	// either is emitted, and a message it drops calls Discard.
	Sequence(rec record.Record, msgs []*Outgoing, emit func(*Outgoing) error) error
	// CommitThrough makes the changes of every record ≤ seq durable. The
	// forwarder calls it before it acknowledges seq to the spool.
	CommitThrough(seq uint64) error
}

// Prefetcher is implemented by a Sequencer that can start work for the
// messages it will be passed next: the forwarder calls Prefetch, from
// Sequence's goroutine, with the messages of the next few records before
// passing them to Sequence. The route state reads the messages and starts
// the memory reads of their look-ups then, a run of them at once, instead
// of waiting for each in turn. Prefetch decides nothing: a Sequencer must
// give the same results without it.
type Prefetcher interface {
	Prefetch(msgs []*Outgoing)
}

// EncoderFunc adapts a function to Encoder.
type EncoderFunc func(rec record.Record, emit func(record.Output)) error

// Encode calls f.
func (f EncoderFunc) Encode(rec record.Record, emit func(record.Output)) error { return f(rec, emit) }

// Mux chooses an encoder by record kind.
type Mux map[record.Kind]Encoder

// ErrUnknownKind is returned for a record whose kind has no encoder.
var ErrUnknownKind = errors.New("no encoder for record kind")

// Encode dispatches on rec.Kind.
func (m Mux) Encode(rec record.Record, emit func(record.Output)) error {
	e, ok := m[rec.Kind]
	if !ok {
		return fmt.Errorf("%w %s", ErrUnknownKind, rec.Kind)
	}
	return e.Encode(rec, emit)
}

// Raw emits the payload of each record of Kind unchanged, keyed by the
// record's key, on Stream. Which stream carries which kind raw is declared
// by the source (record.Stream.Kind), so Raw knows no source of its own.
type Raw struct {
	Kind   record.Kind
	Stream string
}

// RawOf is the raw encoder of a declared raw stream.
func RawOf(s record.Stream) Raw { return Raw{Kind: s.Kind, Stream: s.Name} }

// ErrEmptyPayload is returned for a record with nothing to forward.
var ErrEmptyPayload = errors.New("empty payload")

// Encode implements Encoder.
func (r Raw) Encode(rec record.Record, emit func(record.Output)) error {
	if rec.Kind != r.Kind || r.Stream == "" {
		return fmt.Errorf("%w %s", ErrUnknownKind, rec.Kind)
	}
	if len(rec.Payload) == 0 {
		return ErrEmptyPayload
	}
	emit(record.Output{Stream: r.Stream, Key: rec.Key, Value: rec.Payload, Index: -1})
	return nil
}

// StreamDLQ is the stream the forwarder itself emits: records that could
// not be encoded or sent, raw.
const StreamDLQ = "dlq"

// Streams declares the forwarder's own stream, beside those of the sources.
func Streams() record.Streams {
	return record.Streams{{Name: StreamDLQ, Format: record.FormatRaw}}
}

var (
	_ Encoder = EncoderFunc(nil)
	_ Encoder = Mux(nil)
	_ Encoder = Raw{}
)
