package record

import "fmt"

// Output is one message an encoder makes from a record: what every encoder
// (bmp, exabgp, the forwarder's raw and dead-letter outputs) emits and every
// sink writes, so no source needs an adapter to reach the forwarder.
type Output struct {
	// Stream names the kind of output (bmp.raw, bmp.route.pre-policy, …);
	// the forwarder maps it to a Kafka topic and a NATS subject. It must be
	// one of the streams its source declares.
	Stream string
	Key    []byte
	Value  []byte
	// Index is the output's position within its record, -1 if the record
	// has one output; it ends the message id "<agent>:<seq>:<index>". It
	// must be stable across re-deliveries of the record. Indexes that are
	// not unique within a record are replaced by the emit order.
	Index int
	// Owner, when set, owns the memory Key and Value point into and reuses
	// it once released: a consumer that is done with both (the forwarder,
	// once the sink acknowledged the message) calls Owner.Release() exactly
	// once. A consumer that never calls it leaves the memory to the garbage
	// collector; one that calls it and then reads Key or Value, or calls it
	// twice, reads bytes already reused.
	Owner Releaser
}

// Releaser is told, once, that a holder of its memory is done with it.
type Releaser interface {
	Release()
}

// Holder is a Releaser that takes another holder: a consumer that makes a
// second message of the same bytes holds the owner once more, and each
// hold is released once, so the memory is reused only when both are done.
type Holder interface {
	Releaser
	Hold()
}

// Format says what a stream's values are.
type Format uint8

const (
	// FormatJSON values are JSON documents (docs/schema.md), one per message.
	FormatJSON Format = iota
	// FormatRaw values are bytes as a source received them (a BMP message, an
	// exaBGP line), so that consumers can concatenate or replay them.
	FormatRaw
)

// String is the name used in logs and documentation.
func (f Format) String() string {
	switch f {
	case FormatJSON:
		return "json"
	case FormatRaw:
		return "raw"
	}
	return fmt.Sprintf("format-%d", uint8(f))
}

// Stream declares one output stream. Sources declare the streams their
// encoders emit; the forwarder takes its list of streams, the default topic
// of each and the streams whose topics it creates from these declarations.
type Stream struct {
	// Name is the stream's name in outputs, headers and NATS subjects.
	Name string
	// Topic is the stream's default Kafka topic, before forwarder.topics.prefix
	// (and short_route_names) apply; empty means Name.
	Topic string
	// Format is FormatJSON or FormatRaw.
	Format Format
	// Kind, on a raw stream, is the record kind whose payloads it carries
	// unchanged (0 for none): what the forwarder's raw encoder emits it for.
	Kind Kind
	// Compact marks a stream that holds the latest value per key, a nil
	// value (a tombstone) removing the key: its Kafka topic is created with
	// cleanup.policy=compact.
	Compact bool
	// Optional marks a stream emitted only while a feature is on: its topic
	// is created at its first message rather than checked at every connect.
	Optional bool
}

// DefaultTopic is Topic, or Name when Topic is empty.
func (s Stream) DefaultTopic() string {
	if s.Topic != "" {
		return s.Topic
	}
	return s.Name
}

// Streams is a list of declared streams.
type Streams []Stream

// Names lists the streams' names in order.
func (ss Streams) Names() []string {
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = s.Name
	}
	return names
}

// Lookup finds a stream by name.
func (ss Streams) Lookup(name string) (Stream, bool) {
	for _, s := range ss {
		if s.Name == name {
			return s, true
		}
	}
	return Stream{}, false
}

// RawOf is the raw stream that carries records of kind k unchanged.
func (ss Streams) RawOf(k Kind) (Stream, bool) {
	for _, s := range ss {
		if s.Format == FormatRaw && s.Kind == k && k != 0 {
			return s, true
		}
	}
	return Stream{}, false
}
