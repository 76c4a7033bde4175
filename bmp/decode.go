package bmp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bgpedge/bgpedge/record"
	biobmp "github.com/bio-routing/bio-rd/protocols/bmp/packet"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/prometheus/client_golang/prometheus"
)

// Event types of the JSON events decoded from BMP (record.Event.Type).
const (
	EventRoute          = "route"
	EventPeerUp         = "peer-up"
	EventPeerDown       = "peer-down"
	EventStats          = "stats"
	EventInitiation     = "initiation"
	EventTermination    = "termination"
	EventRouteMirroring = "route-mirroring"
	EventDecodeError    = "decode-error"
)

// Decode error reasons: the complete, fixed set of values of the reason
// label of bgpedge_bmp_decode_errors_total and of DecodeError.Reason.
const (
	ErrReasonBMPHeader    = "bmp-header"    // common or per-peer header unusable
	ErrReasonBMPBody      = "bmp-body"      // BMP message body malformed
	ErrReasonBGPHeader    = "bgp-header"    // BGP PDU header (marker, length, type) wrong
	ErrReasonUpdate       = "bgp-update"    // UPDATE structure or NLRI malformed
	ErrReasonAttribute    = "bgp-attribute" // one path attribute kept raw
	ErrReasonOpen         = "bgp-open"      // an OPEN of a Peer Up
	ErrReasonNotification = "bgp-notification"
	ErrReasonTLV          = "tlv"        // information/stats TLVs malformed
	ErrReasonPeerState    = "peer-state" // the per-peer state could not be stored
)

func errorReasons() []string {
	return []string{ErrReasonBMPHeader, ErrReasonBMPBody, ErrReasonBGPHeader, ErrReasonUpdate, ErrReasonAttribute, ErrReasonOpen, ErrReasonNotification, ErrReasonTLV, ErrReasonPeerState}
}

// ErrUnsupportedKind is returned for records that are not BMP.
var ErrUnsupportedKind = errors.New("bmp: record kind is not bmp")

// DecodeError is the body (Event.Data) of a decode-error event. The message
// itself always goes out on the raw stream too.
type DecodeError struct {
	Reason      string `json:"reason"`
	Error       string `json:"error"`
	MessageType string `json:"message_type"`
	// Message is the whole BMP message as received (base64 in JSON).
	Message []byte `json:"message"`
}

// InfoTLV is an information TLV of an Initiation, Peer Up, Peer Down
// (reason 6) or Termination message. Value is the text when the TLV is
// text, Raw the bytes otherwise.
type InfoTLV struct {
	Type  uint16 `json:"type"`
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
	Raw   []byte `json:"raw,omitempty"`
}

// RouterInfo is the body of initiation and termination events.
type RouterInfo struct {
	SysName  string    `json:"sys_name,omitempty"`
	SysDescr string    `json:"sys_descr,omitempty"`
	TLVs     []InfoTLV `json:"tlvs,omitempty"`
	// Reason is set on termination when the router gave one.
	Reason     *uint16 `json:"reason,omitempty"`
	ReasonName string  `json:"reason_name,omitempty"`
	// Version is the BMP version of the common header.
	Version uint8 `json:"version"`
}

// PeerUp is the body of a peer-up event.
type PeerUp struct {
	LocalAddress string       `json:"local_address"`
	LocalPort    uint16       `json:"local_port"`
	RemotePort   uint16       `json:"remote_port"`
	SentOpen     *OpenMessage `json:"sent_open,omitempty"`
	ReceivedOpen *OpenMessage `json:"received_open,omitempty"`
	Information  []InfoTLV    `json:"information,omitempty"`
	// Negotiated summarises what decoding of this peer's routes will use.
	Negotiated Negotiated `json:"negotiated"`
}

// Negotiated is the outcome of both OPENs.
type Negotiated struct {
	FourOctetAS bool `json:"four_octet_as"`
	// Add-Path families router←peer (Adj-RIB-In) and router→peer (Adj-RIB-Out).
	AddPathIn  []FamilyRef `json:"add_path_in,omitempty"`
	AddPathOut []FamilyRef `json:"add_path_out,omitempty"`
}

// PeerDown is the body of a peer-down event.
type PeerDown struct {
	Reason     uint8  `json:"reason"`
	ReasonName string `json:"reason_name"`
	// Notification is the BGP NOTIFICATION of reasons 1 and 3.
	Notification *Notification `json:"notification,omitempty"`
	// FSMEvent is the FSM event code of reason 2.
	FSMEvent *uint16 `json:"fsm_event,omitempty"`
	// TLVs are the information TLVs of reason 6 (RFC 9069).
	TLVs []InfoTLV `json:"tlvs,omitempty"`
	// Data is the reason's data when it could not be decoded.
	Data []byte `json:"data,omitempty"`
}

// Stats is the body of a stats event.
type Stats struct {
	Counters []StatCounter `json:"counters"`
}

// StatCounter is one statistic. Value is set for the types RFC 7854 and
// RFC 8671 define (0–17), with AFI/SAFI for the per-family types; unknown
// and vendor types (e.g. 65531) carry only Raw.
type StatCounter struct {
	Type   uint16  `json:"type"`
	Name   string  `json:"name"`
	Value  *uint64 `json:"value,omitempty"`
	AFI    uint16  `json:"afi,omitempty"`
	SAFI   uint8   `json:"safi,omitempty"`
	Family string  `json:"family,omitempty"`
	Raw    []byte  `json:"raw,omitempty"`
}

// RouteMirroring is the body of a route-mirroring event.
type RouteMirroring struct {
	TLVs []MirrorTLV `json:"tlvs"`
}

// MirrorTLV is one TLV of a Route Mirroring message: a BGP message (kept
// as received) or an information code.
type MirrorTLV struct {
	Type       uint16  `json:"type"`
	Name       string  `json:"name"`
	BGPMessage []byte  `json:"bgp_message,omitempty"`
	Code       *uint16 `json:"code,omitempty"`
	CodeName   string  `json:"code_name,omitempty"`
	Raw        []byte  `json:"raw,omitempty"`
}

// DecoderOptions configures a Decoder.
type DecoderOptions struct {
	// StateDir keeps the per-peer state (Add-Path, 4-octet AS) across
	// restarts. Empty keeps it in memory only.
	StateDir   string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Decoder turns spooled BMP records into JSON events. BMP framing and
// message bodies are read with bio-rd, BGP payloads with GoBGP; neither
// library's types leave this package. It is safe for concurrent use,
// though per-peer state is only meaningful when records are decoded in
// spool order.
type Decoder struct {
	peers *peerStore
	log   *slog.Logger
	m     *decodeMetrics
}

type decodeMetrics struct {
	// Resolved once for the fast path.
	rmDecoded                      prometheus.Counter
	routesIn, routesOut, routesLoc prometheus.Counter

	decoded    *prometheus.CounterVec
	errors     *prometheus.CounterVec
	routes     *prometheus.CounterVec
	inferred   prometheus.Counter
	otherWidth prometheus.Counter
}

// Message type label values of bgpedge_bmp_decoded_messages_total.
func msgTypeLabels() []string {
	return []string{"route-monitoring", "stats", "peer-down", "peer-up", "initiation", "termination", "route-mirroring", "unknown", "synthetic-peer-down"}
}

func newDecodeMetrics(reg prometheus.Registerer) (*decodeMetrics, error) {
	m := &decodeMetrics{
		decoded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_bmp_decoded_messages_total",
			Help: "BMP messages decoded on the way out, by message type.",
		}, []string{"type"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_bmp_decode_errors_total",
			Help: "BMP messages (or parts of them) that did not decode and were published raw with a decode-error event, by reason.",
		}, []string{"reason"}),
		routes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_bmp_route_events_total",
			Help: "Per-prefix route events decoded from Route Monitoring messages, by RIB.",
		}, []string{"rib"}),
		inferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_addpath_inferred_total",
			Help: "Route Monitoring messages whose Add-Path use was inferred from their content because no Peer Up told it (e.g. Loc-RIB without Peer Up) or the Peer Up's did not fit.",
		}),
		otherWidth: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_aspath_other_width_total",
			Help: "Route Monitoring messages whose AS_PATH only fits the other ASN width than the Peer Up's OPENs (or, without a Peer Up, the A flag) imply, and was read with that one.",
		}),
	}
	for _, t := range msgTypeLabels() {
		m.decoded.WithLabelValues(t)
	}
	for _, r := range errorReasons() {
		m.errors.WithLabelValues(r)
	}
	m.rmDecoded = m.decoded.WithLabelValues("route-monitoring")
	m.routesIn, m.routesOut, m.routesLoc = m.routes.WithLabelValues("adj-rib-in"), m.routes.WithLabelValues("adj-rib-out"), m.routes.WithLabelValues("loc-rib")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.decoded, m.errors, m.routes, m.inferred, m.otherWidth} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("bmp: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *decodeMetrics) routesByRIB(rib string) prometheus.Counter {
	switch rib {
	case "adj-rib-out":
		return m.routesOut
	case "loc-rib":
		return m.routesLoc
	}
	return m.routesIn
}

// NewDecoder opens the per-peer state (loading what earlier runs stored).
func NewDecoder(opts DecoderOptions) (*Decoder, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	peers, err := openPeerStore(opts.StateDir)
	if err != nil {
		return nil, err
	}
	m, err := newDecodeMetrics(opts.Registerer)
	if err != nil {
		peers.close()
		return nil, err
	}
	return &Decoder{peers: peers, log: log, m: m}, nil
}

// Close releases the state file.
func (d *Decoder) Close() error { return d.peers.close() }

// msgCtx is what every event of one message shares.
type msgCtx struct {
	rec    record.Record
	router string
	msg    []byte
	typ    MsgType
	emit   func(record.Event)
}

func (c *msgCtx) event(typ string) record.Event {
	return record.Event{V: record.EventSchemaVersion, Type: typ, Source: "bmp", Router: c.router, Seq: c.rec.Seq, ReceivedAt: c.rec.Time}
}

// Decode emits the events of one spooled record, in a deterministic order.
// It never fails on content: what does not decode is reported as a
// decode-error event (the raw message goes out regardless). It returns an
// error only for records that are not BMP.
func (d *Decoder) Decode(rec record.Record, emit func(record.Event)) error {
	c := &msgCtx{rec: rec, router: RouterAddress(rec), msg: rec.Payload, emit: emit}
	switch rec.Kind {
	case record.KindBMP:
	case record.KindBMPSyntheticPeerDown:
		d.m.decoded.WithLabelValues("synthetic-peer-down").Inc()
		d.syntheticPeerDown(c)
		return nil
	default:
		return fmt.Errorf("%w: %s", ErrUnsupportedKind, rec.Kind)
	}
	n, err := CheckHeader(c.msg, MaxMessageBytesLimit)
	if err != nil || n != len(c.msg) {
		if err == nil {
			err = fmt.Errorf("header length %d, record holds %d bytes", n, len(c.msg))
		}
		// Type unknown: the event must not name one, nor read a peer
		// header out of bytes that are not one.
		c.typ = msgTypeUnknown
		d.m.decoded.WithLabelValues("unknown").Inc()
		d.fail(c, ErrReasonBMPHeader, err)
		return nil
	}
	c.typ = MsgType(c.msg[5])
	label := c.typ.String()
	if label == "unknown" || c.typ > MsgRouteMirroring {
		d.m.decoded.WithLabelValues("unknown").Inc()
		d.fail(c, ErrReasonBMPHeader, fmt.Errorf("unknown message type %d", c.msg[5]))
		return nil
	}
	d.m.decoded.WithLabelValues(label).Inc()

	// bio-rd allocates a slot per claimed statistic before reading any:
	// a lying count would allocate gigabytes (found by FuzzDecodeSession).
	if c.typ == MsgStatistics && len(c.msg) >= HeaderLen+PerPeerHeaderLen+4 {
		room := len(c.msg) - HeaderLen - PerPeerHeaderLen - 4
		if n := binary.BigEndian.Uint32(c.msg[HeaderLen+PerPeerHeaderLen:]); uint64(n) > uint64(room/4) {
			d.fail(c, ErrReasonBMPBody, fmt.Errorf("stats count %d exceeds what %d bytes can hold", n, room))
			return nil
		}
	}
	// bio-rd only accepts version 3; version 4 (draft) keeps the v3 layout
	// for everything decoded here, with optional TLVs after the BGP PDU.
	body := c.msg
	if body[0] != 3 {
		body = append([]byte{3}, c.msg[1:]...)
	}
	if c.typ == MsgPeerUp {
		m, err := splitPeerUp(c.msg)
		if err != nil {
			d.fail(c, ErrReasonBMPBody, err)
			return nil
		}
		d.peerUp(c, m)
		return nil
	}
	bm, err := biobmp.Decode(body)
	if err != nil {
		d.fail(c, ErrReasonBMPBody, err)
		return nil
	}
	switch m := bm.(type) {
	case *biobmp.RouteMonitoringMsg:
		d.routeMonitoring(c, m.BGPUpdate)
	case *biobmp.StatsReport:
		d.stats(c, m)
	case *biobmp.PeerDownNotification:
		d.peerDown(c, m)
	case *biobmp.PeerUpNotification:
		d.peerUp(c, m)
	case *biobmp.InitiationMessage:
		d.routerInfo(c, EventInitiation, m.TLVs)
	case *biobmp.TerminationMessage:
		d.routerInfo(c, EventTermination, m.TLVs)
	case *biobmp.RouteMirroringMsg:
		d.routeMirroring(c, m)
	default:
		d.fail(c, ErrReasonBMPBody, fmt.Errorf("unexpected decoded type %T", bm))
	}
	return nil
}

// fail emits a decode-error event and counts it.
func (d *Decoder) fail(c *msgCtx, reason string, err error) {
	d.m.errors.WithLabelValues(reason).Inc()
	ev := c.event(EventDecodeError)
	if c.typ.HasPerPeerHeader() && c.rec.Kind == record.KindBMP {
		if ph, perr := ParsePeerHeader(c.msg); perr == nil {
			ev.Peer = peerOf(&ph)
			ev.Timestamp = timestamp(ph.Timestamp)
		}
	}
	mt := c.typ.String()
	if len(c.msg) < HeaderLen {
		mt = "unknown"
	}
	ev.Data = &DecodeError{Reason: reason, Error: err.Error(), MessageType: mt, Message: c.msg}
	c.emit(ev)
}

// RouterAddress is the router's IP address for a record: from Source
// ("ip:port" or "ip"), else from Key (4 or 16 address bytes, or text).
func RouterAddress(rec record.Record) string {
	if ap, err := netip.ParseAddrPort(rec.Source); err == nil {
		return ap.Addr().Unmap().String()
	}
	if a, err := netip.ParseAddr(rec.Source); err == nil {
		return a.Unmap().String()
	}
	if a, ok := netip.AddrFromSlice(rec.Key); ok && (len(rec.Key) == 4 || len(rec.Key) == 16) {
		return a.Unmap().String()
	}
	if a, err := netip.ParseAddr(string(rec.Key)); err == nil {
		return a.Unmap().String()
	}
	return rec.Source
}

func timestamp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// formatRD renders a route distinguisher (RFC 4364 types 0, 1, 2).
func formatRD(rd [8]byte) string {
	v := rd[2:]
	switch binary.BigEndian.Uint16(rd[:2]) {
	case 0:
		return strconv.Itoa(int(binary.BigEndian.Uint16(v))) + ":" + strconv.FormatUint(uint64(binary.BigEndian.Uint32(v[2:])), 10)
	case 1:
		return netip.AddrFrom4([4]byte(v[:4])).String() + ":" + strconv.Itoa(int(binary.BigEndian.Uint16(v[4:])))
	case 2:
		return strconv.FormatUint(uint64(binary.BigEndian.Uint32(v)), 10) + ":" + strconv.Itoa(int(binary.BigEndian.Uint16(v[4:])))
	}
	return fmt.Sprintf("%x", rd)
}

func peerOf(ph *PeerHeader) *record.Peer {
	p := &record.Peer{
		Address: ph.Address.String(),
		AS:      ph.AS,
		Type:    peerTypeName(ph.Type),
		Flags:   ph.Flags,
		IPv6:    ph.IPv6(),
		AS2:     ph.TwoByteAS(),
	}
	if ph.BGPID.IsValid() {
		p.BGPID = ph.BGPID.String()
	}
	if ph.Type == PeerTypeLocRIB {
		p.Filtered = ph.Flags&FlagF != 0
	}
	if ph.Distinguisher != ([8]byte{}) {
		p.RD = formatRD(ph.Distinguisher)
	}
	return p
}

func (d *Decoder) syntheticPeerDown(c *msgCtx) {
	c.typ = MsgPeerDown
	// The payload is a bare per-peer header: give it a common header so the
	// shared parser reads it.
	msg := make([]byte, HeaderLen, HeaderLen+len(c.msg))
	msg[0] = 3
	binary.BigEndian.PutUint32(msg[1:5], uint32(HeaderLen+len(c.msg)))
	msg[5] = byte(MsgPeerDown)
	msg = append(msg, c.msg...)
	ph, err := ParsePeerHeader(msg)
	if err != nil || len(c.msg) != PerPeerHeaderLen {
		if err == nil {
			err = fmt.Errorf("synthetic peer down payload of %d bytes, want %d", len(c.msg), PerPeerHeaderLen)
		}
		d.fail(c, ErrReasonBMPHeader, err)
		return
	}
	ev := c.event(EventPeerDown)
	ev.Peer = peerOf(&ph)
	ev.Peer.Synthetic = true
	// The router never said why: the BMP session ended with the peer up.
	ev.Data = &PeerDown{Reason: 0, ReasonName: "bmp-session-closed"}
	c.emit(ev)
}

func (d *Decoder) routeMonitoring(c *msgCtx, pdu []byte) {
	ph, err := ParsePeerHeader(c.msg)
	if err != nil {
		d.fail(c, ErrReasonBMPHeader, err)
		return
	}
	var stateless *peerVersion
	if c.msg[0] == 4 && !hasBGPMarker(pdu) {
		pdu, stateless, err = v4RouteMonitoringTLVs(pdu)
		if err != nil {
			d.fail(c, ErrReasonBMPBody, err)
			return
		}
	}
	typ, body, _, err := bgpBody(pdu)
	if err != nil {
		d.fail(c, ErrReasonBGPHeader, err)
		return
	}
	if typ != bgpMsgUpdate {
		d.fail(c, ErrReasonBGPHeader, fmt.Errorf("route monitoring carries BGP message type %d, not UPDATE", typ))
		return
	}
	dir, rib, policy := dirIn, "adj-rib-in", "pre-policy"
	switch {
	case ph.Type == PeerTypeLocRIB:
		dir, rib, policy = dirLocRIB, "loc-rib", ""
	case ph.AdjRIBOut():
		dir, rib = dirOut, "adj-rib-out"
	}
	if policy != "" && ph.PostPolicy() {
		policy = "post-policy"
	}
	state, known := d.peers.lookup(peerStoreKey(c.router, ph.Key()), c.rec.Seq)
	if stateless != nil {
		state, known = *stateless, true
	}
	// The A flag decides the AS_PATH width only when no Peer Up told it.
	as2 := ph.TwoByteAS()
	if known {
		as2 = state.twoByteAS(as2)
	}
	du, inferred, err := decodeWithInference(body, state, known, dir, as2)
	if err != nil {
		d.fail(c, ErrReasonUpdate, err)
		return
	}
	if inferred {
		d.m.inferred.Inc()
	}
	if du.otherWidth > 0 {
		d.m.otherWidth.Inc()
	}
	peer := peerOf(&ph)
	ts := timestamp(ph.Timestamp)
	for i := range du.routes {
		r := &du.routes[i]
		r.RIB, r.Policy = rib, policy
		ev := c.event(EventRoute)
		ev.Peer, ev.Timestamp, ev.Route = peer, ts, r
		c.emit(ev)
	}
	d.m.routes.WithLabelValues(rib).Add(float64(len(du.routes)))
	if len(du.attrErrs) > 0 {
		d.fail(c, ErrReasonAttribute, errors.Join(du.attrErrs...))
	}
}

// decodeWithInference decodes an UPDATE with the peer's negotiated Add-Path
// families. When no Peer Up told them, or they do not fit the message, it
// tries the other readings and keeps the one that parses, preferring (when
// several do) the one with fewer /0 prefixes: a path id read as NLRI shows
// up as a run of zero-length prefixes.
func decodeWithInference(body []byte, state peerVersion, known bool, dir direction, as2 bool) (decodedUpdate, bool, error) {
	candidates := []pathOptions{{as2: as2}, {as2: as2, addPath: allAddPath()}}
	if known {
		first := state.options(dir, as2)
		candidates = slices.DeleteFunc(candidates, func(o pathOptions) bool { return maps.Equal(o.addPath, first.addPath) })
		candidates = append([]pathOptions{first}, candidates...)
	}
	var (
		best    decodedUpdate
		bestErr error
		bestIdx = -1
	)
	for i, o := range candidates {
		du, err := decodeUpdate(body, o)
		if err != nil {
			if bestIdx < 0 && bestErr == nil {
				bestErr = err // the first reading's error is the one reported
			}
			continue
		}
		if bestIdx < 0 || du.zeroLen < best.zeroLen {
			best, bestIdx = du, i
		}
		if best.zeroLen == 0 {
			break // no other reading can do better
		}
	}
	if bestIdx < 0 {
		return decodedUpdate{}, false, bestErr
	}
	// Without a Peer Up the plain reading is the default, not an inference.
	return best, bestIdx > 0, nil
}

// allAddPath switches Add-Path on for every family decoded into prefixes.
func allAddPath() map[bgp.Family]bool {
	m := map[bgp.Family]bool{}
	for _, f := range []bgp.Family{bgp.RF_IPv4_UC, bgp.RF_IPv6_UC, bgp.RF_IPv4_MC, bgp.RF_IPv6_MC,
		bgp.RF_IPv4_MPLS, bgp.RF_IPv6_MPLS, bgp.RF_IPv4_VPN, bgp.RF_IPv6_VPN,
		bgp.RF_IPv4_VPN_MC, bgp.RF_IPv6_VPN_MC, bgp.RF_EVPN} {
		m[f] = true
	}
	return m
}

// splitPeerUp cuts a Peer Up into its parts, each OPEN by the length in
// its BGP header. bio-rd reads an OPEN by its one-byte optional parameters
// length instead, which RFC 9072's extended form sets to 255 with the real
// length after it, so it rejects every Peer Up of such a session.
func splitPeerUp(msg []byte) (*biobmp.PeerUpNotification, error) {
	const fixed = 20 // local address, local port, remote port
	if len(msg) < HeaderLen+PerPeerHeaderLen+fixed {
		return nil, fmt.Errorf("peer up of %d bytes, shorter than its fixed fields", len(msg))
	}
	b := msg[HeaderLen+PerPeerHeaderLen:]
	m := &biobmp.PeerUpNotification{
		LocalPort:  binary.BigEndian.Uint16(b[16:18]),
		RemotePort: binary.BigEndian.Uint16(b[18:20]),
	}
	copy(m.LocalAddress[:], b[:16])
	b = b[fixed:]
	for _, open := range []struct {
		dst  *[]byte
		name string
	}{{&m.SentOpenMsg, "sent"}, {&m.ReceivedOpenMsg, "received"}} {
		_, _, n, err := bgpBody(b)
		if err != nil {
			return nil, fmt.Errorf("%s open: %w", open.name, err)
		}
		*open.dst, b = b[:n], b[n:]
	}
	if len(b) > 0 {
		m.Information = b
	}
	return m, nil
}

func (d *Decoder) peerUp(c *msgCtx, m *biobmp.PeerUpNotification) {
	ph, err := ParsePeerHeader(c.msg)
	if err != nil {
		d.fail(c, ErrReasonBMPHeader, err)
		return
	}
	pu := &PeerUp{LocalPort: m.LocalPort, RemotePort: m.RemotePort}
	if ph.IPv6() {
		pu.LocalAddress = netip.AddrFrom16(m.LocalAddress).String()
	} else {
		pu.LocalAddress = netip.AddrFrom4([4]byte(m.LocalAddress[12:16])).String()
	}
	var errs []error
	sent, sentCaps, err := decodeOpen(m.SentOpenMsg)
	if err != nil {
		errs = append(errs, fmt.Errorf("sent open: %w", err))
	}
	recv, recvCaps, err := decodeOpen(m.ReceivedOpenMsg)
	if err != nil {
		errs = append(errs, fmt.Errorf("received open: %w", err))
	}
	pu.SentOpen, pu.ReceivedOpen = sent, recv
	if len(m.Information) > 0 {
		tlvs, err := infoTLVs(m.Information, infoTLVName)
		if err != nil {
			errs = append(errs, fmt.Errorf("information: %w", err))
		}
		pu.Information = tlvs
	}
	// State is stored even from a partly decoded Peer Up: an OPEN that did
	// not decode contributes no Add-Path, which is the safe default, and
	// leaves the AS_PATH width to the A flag unless the other OPEN settles it.
	v := negotiate(c.rec.Seq, sentCaps, recvCaps, ph.Type == PeerTypeLocRIB)
	v.Session = c.rec.Source
	key := peerStoreKey(c.router, ph.Key())
	if ph.Type == PeerTypeLocRIB {
		// Some routers (Huawei VRP) send one Loc-RIB Peer Up per address
		// family for the same instance: each adds to, not replaces, the
		// last, within one BMP session; a new session starts afresh, so a
		// family the router stopped announcing is not kept for ever.
		// A version stored before sessions were recorded has none: merged,
		// as it was then.
		if prev, ok := d.peers.lookup(key, c.rec.Seq); ok && (prev.Session == v.Session || prev.Session == "") {
			v = mergeVersions(prev, v)
		}
	}
	pu.Negotiated.FourOctetAS = v.AS4
	for _, f := range v.In {
		pu.Negotiated.AddPathIn = append(pu.Negotiated.AddPathIn, *familyRef(bgp.Family(f)))
	}
	for _, f := range v.Out {
		pu.Negotiated.AddPathOut = append(pu.Negotiated.AddPathOut, *familyRef(bgp.Family(f)))
	}
	if err := d.peers.record(key, v); err != nil {
		d.log.Error("bmp peer state not stored", "router", c.router, "peer", ph.Address, "err", err)
		d.fail(c, ErrReasonPeerState, err)
	}
	ev := c.event(EventPeerUp)
	ev.Peer, ev.Timestamp, ev.Data = peerOf(&ph), timestamp(ph.Timestamp), pu
	c.emit(ev)
	if len(errs) > 0 {
		reason := ErrReasonOpen
		if sent != nil && recv != nil {
			reason = ErrReasonTLV
		}
		d.fail(c, reason, errors.Join(errs...))
	}
}

func (d *Decoder) peerDown(c *msgCtx, m *biobmp.PeerDownNotification) {
	ph, err := ParsePeerHeader(c.msg)
	if err != nil {
		d.fail(c, ErrReasonBMPHeader, err)
		return
	}
	pd := &PeerDown{Reason: m.Reason, ReasonName: peerDownReasonName(m.Reason)}
	// bio-rd keeps the data of reasons 1–3 only; reason 6 (RFC 9069) has
	// TLVs, so the data is taken from the message itself.
	data := c.msg[HeaderLen+PerPeerHeaderLen+1:]
	var failReason string
	var failErr error
	switch m.Reason {
	case 1, 3:
		n, err := decodeNotification(data)
		if err != nil {
			pd.Data, failReason, failErr = data, ErrReasonNotification, err
		}
		pd.Notification = n
	case 2:
		if len(data) == 2 {
			ev := binary.BigEndian.Uint16(data)
			pd.FSMEvent = &ev
		} else {
			pd.Data, failReason, failErr = data, ErrReasonBMPBody, fmt.Errorf("peer down reason 2 with %d bytes of data, want 2", len(data))
		}
	case 6:
		tlvs, err := infoTLVs(data, infoTLVName)
		pd.TLVs = tlvs
		if err != nil {
			pd.Data, failReason, failErr = data, ErrReasonTLV, err
		}
	default:
		if len(data) > 0 {
			pd.Data = data
		}
	}
	ev := c.event(EventPeerDown)
	ev.Peer, ev.Timestamp, ev.Data = peerOf(&ph), timestamp(ph.Timestamp), pd
	c.emit(ev)
	if failErr != nil {
		d.fail(c, failReason, failErr)
	}
}

func (d *Decoder) stats(c *msgCtx, m *biobmp.StatsReport) {
	ph, err := ParsePeerHeader(c.msg)
	if err != nil {
		d.fail(c, ErrReasonBMPHeader, err)
		return
	}
	st := &Stats{Counters: make([]StatCounter, 0, len(m.Stats))}
	for _, t := range m.Stats {
		sc := StatCounter{Type: t.InformationType, Name: statName(t.InformationType)}
		v := t.Information
		switch {
		case !statKnown(t.InformationType):
			sc.Raw = v
		case statPerFamily(t.InformationType) && len(v) == 11:
			sc.AFI, sc.SAFI = binary.BigEndian.Uint16(v), v[2]
			sc.Family = record.FamilyName(sc.AFI, sc.SAFI)
			x := binary.BigEndian.Uint64(v[3:])
			sc.Value = &x
		case !statPerFamily(t.InformationType) && len(v) == 4:
			x := uint64(binary.BigEndian.Uint32(v))
			sc.Value = &x
		case !statPerFamily(t.InformationType) && len(v) == 8:
			x := binary.BigEndian.Uint64(v)
			sc.Value = &x
		default:
			sc.Raw = v // a known type with a length it should not have
		}
		st.Counters = append(st.Counters, sc)
	}
	ev := c.event(EventStats)
	ev.Peer, ev.Timestamp, ev.Data = peerOf(&ph), timestamp(ph.Timestamp), st
	c.emit(ev)
	// bio-rd reads exactly the declared counters: bytes after them would
	// otherwise pass unseen.
	used := HeaderLen + PerPeerHeaderLen + 4
	for _, t := range m.Stats {
		used += 4 + len(t.Information)
	}
	if used != len(c.msg) {
		d.fail(c, ErrReasonTLV, fmt.Errorf("%d bytes after the %d declared counters", len(c.msg)-used, m.StatsCount))
	}
}

func (d *Decoder) routerInfo(c *msgCtx, typ string, tlvs []*biobmp.InformationTLV) {
	ri := &RouterInfo{Version: c.msg[0]}
	name := infoTLVName
	if typ == EventTermination {
		name = terminationTLVName
	}
	for _, t := range tlvs {
		it := infoTLV(t.InformationType, t.Information, name)
		if typ == EventTermination && t.InformationType == 1 {
			it.Value = ""
			if len(t.Information) == 2 {
				r := binary.BigEndian.Uint16(t.Information)
				ri.Reason, ri.ReasonName = &r, terminationReasonName(r)
			}
			it.Raw = t.Information
		}
		if typ == EventInitiation {
			switch t.InformationType {
			case 1:
				ri.SysDescr = it.Value
			case 2:
				ri.SysName = it.Value
			}
		}
		ri.TLVs = append(ri.TLVs, it)
	}
	ev := c.event(typ)
	ev.Data = ri
	c.emit(ev)
}

func (d *Decoder) routeMirroring(c *msgCtx, m *biobmp.RouteMirroringMsg) {
	ph, err := ParsePeerHeader(c.msg)
	if err != nil {
		d.fail(c, ErrReasonBMPHeader, err)
		return
	}
	rm := &RouteMirroring{}
	for _, t := range m.TLVs {
		mt := MirrorTLV{Type: t.InformationType, Name: mirrorTLVName(t.InformationType)}
		switch {
		case t.InformationType == 0:
			mt.BGPMessage = t.Information
		case t.InformationType == 1 && len(t.Information) == 2:
			code := binary.BigEndian.Uint16(t.Information)
			mt.Code, mt.CodeName = &code, mirrorInfoName(code)
		default:
			mt.Raw = t.Information
		}
		rm.TLVs = append(rm.TLVs, mt)
	}
	ev := c.event(EventRouteMirroring)
	ev.Peer, ev.Timestamp, ev.Data = peerOf(&ph), timestamp(ph.Timestamp), rm
	c.emit(ev)
}

// infoTLVs parses a sequence of information TLVs (2-byte type, 2-byte length).
func infoTLVs(b []byte, name func(uint16) string) ([]InfoTLV, error) {
	var out []InfoTLV
	for len(b) > 0 {
		if len(b) < 4 {
			return out, fmt.Errorf("truncated tlv header (%d bytes)", len(b))
		}
		t, l := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+l {
			return out, fmt.Errorf("tlv %d length %d exceeds %d bytes", t, l, len(b)-4)
		}
		out = append(out, infoTLV(t, b[4:4+l], name))
		b = b[4+l:]
	}
	return out, nil
}

func infoTLV(t uint16, v []byte, name func(uint16) string) InfoTLV {
	it := InfoTLV{Type: t, Name: name(t)}
	// Some routers NUL-terminate their strings.
	if s := strings.TrimRight(string(v), "\x00"); len(s) > 0 && utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\r' && r != '\t' }) {
		it.Value = s
		return it
	}
	it.Raw = v
	return it
}

func hasBGPMarker(b []byte) bool {
	if len(b) < 16 {
		return false
	}
	for _, x := range b[:16] {
		if x != 0xff {
			return false
		}
	}
	return true
}

// v4RouteMonitoringTLVs reads the TLVs of a BMP version 4 Route Monitoring
// message (draft-ietf-grow-bmp-tlv: type, length, index, value): the BGP
// PDU, and the capabilities of a stateless-parsing TLV (type 1), which say
// how to parse this message without a Peer Up. Other TLVs (path marking,
// VRF name, …) are not broken out.
func v4RouteMonitoringTLVs(b []byte) ([]byte, *peerVersion, error) {
	var (
		pdu       []byte
		stateless *peerVersion
	)
	for len(b) > 0 {
		if len(b) < 6 {
			return nil, nil, fmt.Errorf("bmp v4 tlv: truncated header (%d bytes)", len(b))
		}
		t, l := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 6+l {
			return nil, nil, fmt.Errorf("bmp v4 tlv %d: length %d exceeds %d bytes", t, l, len(b)-6)
		}
		v := b[6 : 6+l]
		b = b[6+l:]
		switch {
		case hasBGPMarker(v) && pdu == nil:
			pdu = v
		case t == 1:
			caps := openCaps{read: true}
			for cv := v; len(cv) >= 2 && len(cv) >= 2+int(cv[1]); cv = cv[2+int(cv[1]):] {
				code, val := cv[0], cv[2:2+int(cv[1])]
				switch code {
				case 65:
					caps.as4 = true
				case 69:
					if caps.addPath == nil {
						caps.addPath = map[bgp.Family]bgp.BGPAddPathMode{}
					}
					for ; len(val) >= 4; val = val[4:] {
						caps.addPath[bgp.NewFamily(binary.BigEndian.Uint16(val), val[2])] = bgp.BGPAddPathMode(val[3])
					}
				}
			}
			// The TLV states the encoding of this very message: a family
			// listed with any mode carries path ids, in every direction.
			v := negotiate(0, caps, caps, false)
			v.In, v.Out = v.LocRIB, v.LocRIB
			stateless = &v
		}
	}
	if pdu == nil {
		return nil, nil, errors.New("bmp v4 route monitoring without a BGP PDU tlv")
	}
	return pdu, stateless, nil
}
