package forwarder

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/bgpedge/bgpedge/record"
)

// Header names carried by every output message (Kafka headers, NATS headers).
const (
	HeaderID     = "bgpedge-id"
	HeaderKind   = "bgpedge-kind"
	HeaderRouter = "bgpedge-router"
	HeaderAgent  = "bgpedge-agent"
	HeaderStream = "bgpedge-stream"
	// HeaderKey carries the partitioning key on NATS (base64), which has no
	// key of its own, so the bridge can restore it.
	HeaderKey = "bgpedge-key"
	// HeaderTombstone marks, on NATS, an empty message that stands for a
	// Kafka tombstone (null value); the bridge turns it back into one.
	HeaderTombstone = "bgpedge-tombstone"
	// HeaderError is set on dead letters: why the record could not be encoded.
	HeaderError = "bgpedge-error"
)

// Header is one message header.
type Header struct {
	Key   string
	Value string
}

// Outgoing is a message ready for a sink.
type Outgoing struct {
	Seq     uint64 // spool seq of the record it came from
	Index   int    // position within the record's outputs, -1 for a lone output
	ID      string // <agent-id>:<seq>[:<index>]
	Stream  string
	Key     []byte
	Value   []byte
	Headers []Header

	// owner owns the memory of Key and Value (record.Output.Owner): the
	// tracker releases it once the sink acknowledged the message, the
	// last time anything reads them. nil: left to the garbage collector.
	owner record.Releaser

	// kind, router and agent stand for headers when implied (below) is
	// set: the headers every output carries first (HeaderID,
	// HeaderKind, HeaderRouter, HeaderAgent, HeaderStream) are given by
	// ID, kind, router, agent and Stream instead of stored in Headers,
	// which then holds only those that follow them. Stored, the five
	// cost 160 bytes a message for the collector to scan; sinks walk
	// all of them with headerCount and header, or AllHeaders.
	kind, router, agent string

	// Packed together: a message is allocated, written and scanned for
	// every event, so its size counts.
	size     int32  // msgBytes, once computed
	keyHash  uint32 // keyHash(Key) when hashed, taken where the key was written
	reported bool   // its ack was counted by the session's tracker
	implied  bool
	hashed   bool
}

// Share makes m hold the memory of o's Key and Value as o does: a Sequencer
// that adds a message pointing into o's bytes calls it, so that the bytes
// are reused only once both are acknowledged. An owner that cannot be held
// twice is taken from o instead: its bytes are then left to the garbage
// collector.
func (m *Outgoing) Share(o *Outgoing) {
	if o.owner == nil {
		return
	}
	if h, ok := o.owner.(record.Holder); ok {
		h.Hold()
		m.owner = o.owner
		return
	}
	o.owner = nil
}

// Discard lets go of the memory of a message that will not be sent (a
// Sequencer that drops it calls it); it must not be read afterwards.
func (m *Outgoing) Discard() {
	if m.owner != nil {
		m.owner.Release()
		m.owner = nil
	}
}

// headerCount is the number of headers m carries.
func (m *Outgoing) headerCount() int {
	if m.implied {
		return impliedHeaders + len(m.Headers)
	}
	return len(m.Headers)
}

// impliedHeaders is how many headers implied stands for.
const impliedHeaders = 5

// header returns m's i-th header, i < headerCount.
func (m *Outgoing) header(i int) Header {
	if !m.implied {
		return m.Headers[i]
	}
	switch i {
	case 0:
		return Header{HeaderID, m.ID}
	case 1:
		return Header{HeaderKind, m.kind}
	case 2:
		return Header{HeaderRouter, m.router}
	case 3:
		return Header{HeaderAgent, m.agent}
	case 4:
		return Header{HeaderStream, m.Stream}
	}
	return m.Headers[i-impliedHeaders]
}

// AllHeaders returns every header of m, in order: Headers itself, or a
// new slice when some are implied.
func (m *Outgoing) AllHeaders() []Header {
	if !m.implied {
		return m.Headers
	}
	h := make([]Header, 0, m.headerCount())
	for i := range m.headerCount() {
		h = append(h, m.header(i))
	}
	return h
}

// MessageID is the stable id of a record's output message: "<agent>:<seq>",
// with ":<index>" when the record has several outputs.
func MessageID(agent string, seq uint64, index int) string {
	b := make([]byte, 0, len(agent)+24)
	b = append(b, agent...)
	b = append(b, ':')
	b = strconv.AppendUint(b, seq, 10)
	if index >= 0 {
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(index), 10)
	}
	return string(b)
}

// ParseMessageID splits an id made by MessageID; index is -1 when absent.
func ParseMessageID(id string) (agent string, seq uint64, index int, err error) {
	parts := strings.Split(id, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return "", 0, 0, fmt.Errorf("parse id %q: want agent:seq[:index]", id)
	}
	seq, err = strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return "", 0, 0, fmt.Errorf("parse id %q: %w", id, err)
	}
	index = -1
	if len(parts) == 3 {
		i, err := strconv.Atoi(parts[2])
		if err != nil || i < 0 {
			return "", 0, 0, fmt.Errorf("parse id %q: bad index", id)
		}
		index = i
	}
	return parts[0], seq, index, nil
}

// AckFunc reports the outcome of one message handed to a sink: err is nil
// once the destination has durably accepted it.
type AckFunc func(m *Outgoing, err error)

// Sink is a destination. A sink is used by one goroutine at a time for
// Connect/Write/Close, while acks arrive on other goroutines.
type Sink interface {
	// Name is a short stable name for logs and metric labels: kafka, nats.
	Name() string
	// Connect opens the connection and checks (or creates) the destination's
	// topics or stream. It fails with an error wrapping ErrUnavailable when
	// the destination cannot be reached.
	Connect(ctx context.Context) error
	// Write hands the batch over and may return before it is acknowledged.
	// Every message of the batch is reported to ack exactly once — also when
	// Write fails — at the latest when Close returns.
	Write(ctx context.Context, batch []*Outgoing, ack AckFunc) error
	// Close flushes what was written and disconnects, honouring ctx's deadline.
	Close(ctx context.Context) error
}

// PayloadLimiter is implemented by sinks whose destination has a message
// size limit of its own, known once connected (NATS's max_payload): the
// forwarder then dead-letters what exceeds the smaller of it and
// kafka.max_message_bytes instead of retrying it for ever.
type PayloadLimiter interface {
	MaxPayload() int
}

// Prober is implemented by sinks that can check their destination's health
// without being connected, so an idle primary can be watched for recovery.
type Prober interface {
	Probe(ctx context.Context) error
}

// Errors that drive the forwarder's failover.
var (
	// ErrUnavailable means the destination could not be reached.
	ErrUnavailable = errors.New("destination unavailable")
	// ErrMissingTopic means a topic is missing and may not be created.
	ErrMissingTopic = errors.New("missing topic")
	// ErrNotConnected is returned by Write before Connect.
	ErrNotConnected = errors.New("sink not connected")
)

// within runs dial and returns its result, or ctx's error once ctx ends
// first; a connection that arrives after that is closed. The client
// libraries' dials honour only their own timeouts, which a shutdown or a
// probe deadline must not wait for.
func within[T any](ctx context.Context, dial func() (T, error), closeLate func(T)) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := dial()
		ch <- res{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.err == nil {
				closeLate(r.v)
			}
		}()
		var zero T
		return zero, ctx.Err()
	}
}
