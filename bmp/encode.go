package bmp

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
)

// Output streams of BMP records. The forwarder maps each to a Kafka topic
// and a NATS subject.
const (
	StreamRaw              = "bmp.raw"
	StreamRoutePrePolicy   = "bmp.route.pre-policy"  // Adj-RIB-In, pre-policy
	StreamRoutePostPolicy  = "bmp.route.post-policy" // Adj-RIB-In, post-policy
	StreamRouteLocRIB      = "bmp.route.loc-rib"
	StreamRouteAdjRIBOut   = "bmp.route.adj-rib-out" // both policies; Route.Policy tells which
	StreamPeer             = "bmp.peer"              // peer up and down, synthetic ones included
	StreamStats            = "bmp.stats"
	StreamRouter           = "bmp.router" // initiation and termination
	StreamErrors           = "bmp.errors" // decode errors
	StreamMirror           = "bmp.mirror" // route mirroring
	streamCount            = 10
	encodingKeyPrefix      = "bmp.encoding."
	defaultCollectorAdmin  = "bgpedge"
	maxCollectorNameLength = 255
)

// Streams declares every stream a BMP encoder can emit: bmp.raw carries
// the BMP messages of record.KindBMP as received, the others JSON events
// (docs/schema.md). Each stream's default topic is its name.
func Streams() record.Streams {
	ss := record.Streams{{Name: StreamRaw, Format: record.FormatRaw, Kind: record.KindBMP}}
	for _, name := range []string{StreamRoutePrePolicy, StreamRoutePostPolicy, StreamRouteLocRIB, StreamRouteAdjRIBOut,
		StreamPeer, StreamStats, StreamRouter, StreamErrors, StreamMirror} {
		ss = append(ss, record.Stream{Name: name, Format: record.FormatJSON})
	}
	return ss
}

// Encoding selects what the forwarder publishes for each BMP record. It is
// the `bmp.encoding` section of the configuration.
type Encoding struct {
	// Raw publishes every BMP message as received on bmp.raw.
	Raw bool `mapstructure:"raw"`
	// OpenBMPEnvelope wraps raw messages in the OpenBMP v1.7 binary header.
	OpenBMPEnvelope bool `mapstructure:"openbmp_envelope"`
	// JSON publishes decoded events (docs/schema.md).
	JSON bool `mapstructure:"json"`
	// CollectorName is the OpenBMP collector admin id.
	CollectorName string `mapstructure:"collector_name"`
	// StateDir holds the per-peer decoding state (Add-Path, 4-octet AS);
	// empty keeps it in memory, which loses it across restarts.
	StateDir string `mapstructure:"state_dir"`
}

// DefaultEncoding publishes raw messages (without envelope) and JSON events.
func DefaultEncoding() Encoding {
	return Encoding{Raw: true, JSON: true, CollectorName: defaultCollectorAdmin}
}

// Validate checks the encoding on its own; errors name the full key.
func (e Encoding) Validate() error {
	var errs []error
	if !e.Raw && !e.JSON {
		errs = append(errs, fmt.Errorf("%sraw, %sjson: at least one must be true", encodingKeyPrefix, encodingKeyPrefix))
	}
	if e.OpenBMPEnvelope && !e.Raw {
		errs = append(errs, fmt.Errorf("%sopenbmp_envelope: requires %sraw", encodingKeyPrefix, encodingKeyPrefix))
	}
	if len(e.CollectorName) > maxCollectorNameLength {
		errs = append(errs, fmt.Errorf("%scollector_name: longer than %d bytes", encodingKeyPrefix, maxCollectorNameLength))
	}
	return errors.Join(errs...)
}

// Output is the one output type of every encoder (record.Output), under
// the name the encoder's code uses. Index is the output's position within
// its record: the raw message is 0 and JSON events are 1…n in decoding
// order, the same on every re-delivery of the record, so output ids
// "<agent-id>:<seq>:<index>" are stable.
type Output = record.Output

// EncoderOptions configures an Encoder.
type EncoderOptions struct {
	Encoding   Encoding
	AgentID    string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Encoder turns spooled BMP records into output messages: the raw message
// and the decoded JSON events. The forwarder calls it on the way out.
type Encoder struct {
	enc     Encoding
	agentID string
	dec     *Decoder
	// fast sends Route Monitoring through the fast path (fastpath.go);
	// off, everything takes the library path, which the tests compare it to.
	fast bool
	// agentPlain: the agent id needs no JSON escaping.
	agentPlain bool
	// pool holds the fast path's scratch (*fastState: buffers,
	// remembered peer and times), one per concurrent call; spare keeps
	// one across the garbage collections that empty the pool.
	pool  sync.Pool
	spare atomic.Pointer[fastState]
	outs  *sync.Pool // *outChunk: the fast path's output chunks, reused once released

	fastHits atomic.Uint64
}

// NewEncoder validates the encoding and opens the decoder's per-peer state.
func NewEncoder(opts EncoderOptions) (*Encoder, error) {
	if err := opts.Encoding.Validate(); err != nil {
		return nil, err
	}
	dec, err := NewDecoder(DecoderOptions{StateDir: opts.Encoding.StateDir, Logger: opts.Logger, Registerer: opts.Registerer})
	if err != nil {
		return nil, err
	}
	e := &Encoder{enc: opts.Encoding, agentID: opts.AgentID, dec: dec, fast: true}
	e.agentPlain = string(appendJSONString(nil, opts.AgentID)) == `"`+opts.AgentID+`"`
	e.outs = newChunkPool()
	return e, nil
}

// Close releases the per-peer state file.
func (e *Encoder) Close() error { return e.dec.Close() }

// ID is the stable output id of a record's index-th output.
func ID(agentID string, seq uint64, index int) string {
	return agentID + ":" + strconv.FormatUint(seq, 10) + ":" + strconv.Itoa(index)
}

// Encode emits the outputs of one record. Content that does not decode
// never fails the call (it becomes a decode-error event next to the raw
// message); only a record that is not BMP, or an event that cannot be
// marshalled, returns an error.
func (e *Encoder) Encode(rec record.Record, emit func(Output)) error {
	if e.fast && e.enc.JSON && e.encodeFast(rec, emit) {
		return nil
	}
	router := RouterAddress(rec)
	if e.enc.Raw && rec.Kind == record.KindBMP {
		e.emitRaw(rec, router, emit)
	}
	if !e.enc.JSON {
		if rec.Kind != record.KindBMP && rec.Kind != record.KindBMPSyntheticPeerDown {
			return fmt.Errorf("%w: %s", ErrUnsupportedKind, rec.Kind)
		}
		return nil
	}
	index := 0
	var merr error
	err := e.dec.Decode(rec, func(ev record.Event) {
		index++
		ev.ID, ev.Agent = ID(e.agentID, rec.Seq, index), e.agentID
		v, err := json.Marshal(&ev)
		if err != nil {
			merr = errors.Join(merr, fmt.Errorf("bmp: marshal %s event: %w", ev.Type, err))
			return
		}
		emit(Output{Stream: streamOf(&ev), Key: eventKey(&ev), Value: v, Index: index})
	})
	return errors.Join(err, merr)
}

// emitRaw emits the raw message, in its envelope if configured.
func (e *Encoder) emitRaw(rec record.Record, router string, emit func(Output)) {
	v := rec.Payload
	if e.enc.OpenBMPEnvelope {
		addr, _ := netip.ParseAddr(router)
		v = AppendOpenBMP(make([]byte, 0, openBMPFixedLen+len(e.enc.CollectorName)+len(rec.Payload)), e.enc.CollectorName, addr, rec.Time, rec.Payload)
	}
	emit(Output{Stream: StreamRaw, Key: []byte(router), Value: v, Index: 0})
}

// streamOf routes an event to its stream.
func streamOf(ev *record.Event) string {
	switch ev.Type {
	case EventRoute:
		switch {
		case ev.Route.RIB == "loc-rib":
			return StreamRouteLocRIB
		case ev.Route.RIB == "adj-rib-out":
			return StreamRouteAdjRIBOut
		case ev.Route.Policy == "post-policy":
			return StreamRoutePostPolicy
		}
		return StreamRoutePrePolicy
	case EventPeerUp, EventPeerDown:
		return StreamPeer
	case EventStats:
		return StreamStats
	case EventInitiation, EventTermination:
		return StreamRouter
	case EventRouteMirroring:
		return StreamMirror
	}
	return StreamErrors
}

// eventKey partitions events. A route is keyed by router, peer (RD and
// address), route RD and prefix — not the path id — so every change to one
// prefix of one peer, whichever path it concerns, stays in order in one
// partition. Routes of families carried raw, and End-of-RIB markers, are
// keyed by router, peer and family. Everything else is keyed by router, so
// a router's session events stay in order.
func eventKey(ev *record.Event) []byte {
	if ev.Type != EventRoute || ev.Peer == nil {
		return []byte(ev.Router)
	}
	r := ev.Route
	k := make([]byte, 0, 96)
	k = append(k, ev.Router...)
	k = append(k, '|')
	k = append(k, ev.Peer.RD...)
	k = append(k, '|')
	k = append(k, ev.Peer.Address...)
	k = append(k, '|')
	if r.Prefix == "" {
		return append(k, r.Family...)
	}
	k = append(k, r.RD...)
	k = append(k, '|')
	return append(k, r.Prefix...)
}
