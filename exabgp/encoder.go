package exabgp

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/bgpedge/bgpedge/record"
)

// Output streams of exaBGP records.
const (
	StreamRoute  = "exabgp.route"
	StreamPeer   = "exabgp.peer"
	StreamRaw    = "exabgp.raw"
	StreamErrors = "exabgp.errors"
)

// Streams declares every stream an exaBGP encoder can emit: exabgp.raw
// carries the lines of record.KindExaBGP as received, the others JSON
// events. Each stream's default topic is its name.
func Streams() record.Streams {
	return record.Streams{
		{Name: StreamRoute, Format: record.FormatJSON},
		{Name: StreamPeer, Format: record.FormatJSON},
		{Name: StreamRaw, Format: record.FormatRaw, Kind: record.KindExaBGP},
		{Name: StreamErrors, Format: record.FormatJSON},
	}
}

// ErrWrongKind is returned for a record that is not record.KindExaBGP.
var ErrWrongKind = errors.New("exabgp encoder: record is not an exabgp line")

// Encoder turns a spooled exaBGP line into output messages. It is safe for
// concurrent use and remembers each session's negotiated capabilities, which
// raw (packets) UPDATEs need to decode.
type Encoder struct {
	// AgentID prefixes event ids: "<agent>:<seq>:<index>".
	AgentID string
	// Raw also emits the line as received on exabgp.raw (first output).
	Raw        bool
	norm       Normaliser
	lineErrors atomic.Uint64
}

// DecodeErrors counts what did not decode: whole lines (not exaBGP's JSON,
// or not normalisable) and raw UPDATEs inside otherwise good events.
func (e *Encoder) DecodeErrors() (lines, updates uint64) {
	return e.lineErrors.Load(), e.norm.DecodeErrors.Load()
}

// decodeErrorData is the Data of a decode-error event.
type decodeErrorData struct {
	Error string `json:"error"`
	Line  string `json:"line"`
}

// Encode emits, in a fixed order: the raw line (if enabled), then either the
// normalised events (one per prefix on exabgp.route, or one on exabgp.peer)
// or a decode-error event on exabgp.errors. Route events are keyed by
// neighbor and prefix so one prefix of one peer stays in one partition; other
// events by neighbor. A line that does not decode is never an error of
// Encode: it is kept raw and reported on exabgp.errors.
//
// Outputs are numbered in emit order, and the one output of a record that
// has one gets index -1, so that the index ends the event's id as above.
func (e *Encoder) Encode(rec record.Record, emit func(record.Output)) error {
	if rec.Kind != record.KindExaBGP {
		return fmt.Errorf("%w: kind %s", ErrWrongKind, rec.Kind)
	}
	events, streams, keys := e.events(rec)
	n := len(events)
	if e.Raw {
		n++
	}
	idx := 0
	next := func() (id string, index int) {
		id, index = e.AgentID+":"+strconv.FormatUint(rec.Seq, 10), -1
		if n > 1 {
			id += ":" + strconv.Itoa(idx)
			index = idx
		}
		idx++
		return id, index
	}
	if e.Raw {
		_, index := next()
		emit(record.Output{Stream: StreamRaw, Key: rec.Key, Value: rec.Payload, Index: index})
	}
	for i := range events {
		ev := &events[i]
		var index int
		ev.ID, index = next()
		ev.Agent = e.AgentID
		ev.Seq = rec.Seq
		ev.ReceivedAt = rec.Time.UTC()
		b, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("marshal event: %w", err)
		}
		emit(record.Output{Stream: streams[i], Key: keys[i], Value: b, Index: index})
	}
	return nil
}

func (e *Encoder) events(rec record.Record) ([]record.Event, []string, [][]byte) {
	m, err := ParseEvent(rec.Payload)
	var evs []record.Event
	if err == nil {
		evs, err = e.norm.Normalise(m)
	}
	if err != nil {
		e.lineErrors.Add(1)
		ev := record.Event{V: record.EventSchemaVersion, Type: TypeDecodeError, Source: "exabgp",
			Data: decodeErrorData{Error: err.Error(), Line: string(rec.Payload)}}
		if len(rec.Key) > 0 {
			ev.Peer = &record.Peer{Address: string(rec.Key), Type: "exabgp"}
		}
		return []record.Event{ev}, []string{StreamErrors}, [][]byte{rec.Key}
	}
	streams := make([]string, len(evs))
	keys := make([][]byte, len(evs))
	for i := range evs {
		ev := &evs[i]
		peer := ""
		if ev.Peer != nil {
			peer = ev.Peer.Address
		}
		if ev.Type == TypeDecodeError {
			streams[i], keys[i] = StreamErrors, []byte(peer)
			continue
		}
		if ev.Type == TypeRoute && ev.Route != nil {
			streams[i] = StreamRoute
			keys[i] = []byte(peer + "|" + ev.Route.Family + "|" + ev.Route.Prefix)
			continue
		}
		streams[i] = StreamPeer
		keys[i] = []byte(peer)
	}
	return evs, streams, keys
}
