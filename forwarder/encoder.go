package forwarder

import (
	"errors"
	"fmt"

	"github.com/bgpedge/bgpedge/record"
)

// Message is one output message an encoder makes from a record.
type Message struct {
	// Stream names the kind of output (bmp.raw, bmp.route.pre-policy, …); the
	// forwarder maps it to a Kafka topic and a NATS subject.
	Stream string
	Key    []byte
	Value  []byte
	// Index is the message's position within the record's outputs, -1 if the
	// record has one output; it ends the message id "<agent>:<seq>:<index>".
	// It must be stable across re-deliveries of the record. Indexes that are
	// not unique within a record are replaced by the emit order.
	Index int
}

// Encoder turns a spooled record into output messages. An error sends the
// record, raw, to the dead-letter stream; messages emitted before the error
// are discarded.
type Encoder interface {
	Encode(rec record.Record, emit func(Message)) error
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
	// drop, change or add messages. A message it adds leaves ID and Headers
	// empty (the forwarder fills them) and sets an Index unique within the
	// record. emit fails once the session ends; Sequence then returns.
	Sequence(rec record.Record, msgs []*Outgoing, emit func(*Outgoing) error) error
	// CommitThrough makes the changes of every record ≤ seq durable. The
	// forwarder calls it before it acknowledges seq to the spool.
	CommitThrough(seq uint64) error
}

// EncoderFunc adapts a function to Encoder.
type EncoderFunc func(rec record.Record, emit func(Message)) error

// Encode calls f.
func (f EncoderFunc) Encode(rec record.Record, emit func(Message)) error { return f(rec, emit) }

// StreamEncoderFunc adapts an encoder that emits (stream, key, value)
// without indexes to Encoder: outputs are numbered in emit order, -1 for a
// record with one output.
type StreamEncoderFunc func(rec record.Record, emit func(stream string, key, value []byte)) error

// Encode calls f.
func (f StreamEncoderFunc) Encode(rec record.Record, emit func(Message)) error {
	var msgs []Message
	err := f(rec, func(stream string, key, value []byte) {
		msgs = append(msgs, Message{Stream: stream, Key: key, Value: value, Index: len(msgs)})
	})
	if err != nil {
		return err
	}
	if len(msgs) == 1 {
		msgs[0].Index = -1
	}
	for _, m := range msgs {
		emit(m)
	}
	return nil
}

// Mux chooses an encoder by record kind.
type Mux map[record.Kind]Encoder

// ErrUnknownKind is returned for a record whose kind has no encoder.
var ErrUnknownKind = errors.New("no encoder for record kind")

// Encode dispatches on rec.Kind.
func (m Mux) Encode(rec record.Record, emit func(Message)) error {
	e, ok := m[rec.Kind]
	if !ok {
		return fmt.Errorf("%w %s", ErrUnknownKind, rec.Kind)
	}
	return e.Encode(rec, emit)
}

// Raw emits each record's payload unchanged, keyed by the record's key, on
// the stream "<source kind>.raw" (bmp.raw, exabgp.raw).
type Raw struct{}

// ErrEmptyPayload is returned for a record with nothing to forward.
var ErrEmptyPayload = errors.New("empty payload")

// Encode implements Encoder.
func (Raw) Encode(rec record.Record, emit func(Message)) error {
	if len(rec.Payload) == 0 {
		return ErrEmptyPayload
	}
	var stream string
	switch rec.Kind {
	case record.KindBMP:
		stream = StreamBMPRaw
	case record.KindExaBGP:
		stream = "exabgp.raw"
	default:
		return fmt.Errorf("%w %s", ErrUnknownKind, rec.Kind)
	}
	emit(Message{Stream: stream, Key: rec.Key, Value: rec.Payload, Index: -1})
	return nil
}

// Stream names the forwarder itself uses.
const (
	StreamBMPRaw = "bmp.raw"
	// StreamRIB is the route state's compacted stream (package rib): its
	// Kafka topic is created with cleanup.policy=compact.
	StreamRIB = "bmp.rib"
	StreamDLQ = "dlq"
)

var (
	_ Encoder = EncoderFunc(nil)
	_ Encoder = StreamEncoderFunc(nil)
	_ Encoder = Mux(nil)
	_ Encoder = Raw{}
)
