package rib

import (
	"bytes"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// The stage reads the few fields it needs from the JSON events the BMP
// encoder made (docs/schema.md), in spool order. It does not decode them:
// the encoder writes a fixed field order, the fields it reads never need
// JSON escaping (addresses, names, distinguishers, prefixes), and fields are
// only ever added to the schema. The route and peer objects are flat up to
// the fields read here.

// Tables, as in the stored route key and in bmp.rib keys.
const (
	TableAdjInPre   = "adj-rib-in-pre"
	TableAdjInPost  = "adj-rib-in-post"
	TableAdjOutPre  = "adj-rib-out-pre"
	TableAdjOutPost = "adj-rib-out-post"
	TableLocRIB     = "loc-rib"
)

// Tables lists every table.
func Tables() []string {
	return []string{TableAdjInPre, TableAdjInPost, TableAdjOutPre, TableAdjOutPost, TableLocRIB}
}

var (
	routeEventPrefix    = []byte(`{"v":1,"type":"route",`)
	peerDownEventPrefix = []byte(`{"v":1,"type":"peer-down",`)
	peerObjStart        = []byte(`,"peer":{`)
	routeObjStart       = []byte(`,"route":{`)
	agentField          = []byte(`,"agent":`)
)

// event is what the stage reads of a route or peer-down event.
type event struct {
	peer     string // peerKey
	router   string
	peerRD   string
	peerAddr string
	// route events only
	table, family string
	rk            string // the route key within its peer (rkey)
	pathID        uint32
	afi           uint16
	safi          uint8
	withdraw, eor bool
	hash          uint64 // of the route object, announcements only
	// envelope is the event from ,"agent": through the peer object (marked
	// synthetic), for synthetic events made from a peer-down; peerJSON is
	// that peer object.
	envelope []byte
	peerJSON []byte
	// streamKey is a route's key in the route streams (routeStreamKey);
	// valid until the next event is parsed.
	streamKey []byte
}

// A route's key within its peer is table|family|rd|prefix|path id
// (parser.route builds it).

// peerKey is a peer's key: router|type|distinguisher|address.
func peerKey(router, typ, rd, addr string) string {
	return router + "|" + typ + "|" + rd + "|" + addr
}

// splitPeer undoes peerKey.
func splitPeer(pk string) (router, typ, rd, addr string) {
	router, rest, _ := strings.Cut(pk, "|")
	typ, rest, _ = strings.Cut(rest, "|")
	rd, addr, _ = strings.Cut(rest, "|")
	return
}

// splitRoute undoes rkey; the prefix (EVPN's readable form included) is
// everything between the third and the last '|'.
func splitRoute(rk string) (table, family, rd, prefix string, pathID uint32) {
	table, rest, _ := strings.Cut(rk, "|")
	family, rest, _ = strings.Cut(rest, "|")
	rd, rest, _ = strings.Cut(rest, "|")
	i := strings.LastIndexByte(rest, '|')
	if i < 0 {
		return table, family, rd, rest, 0
	}
	id, _ := strconv.ParseUint(rest[i+1:], 10, 32)
	return table, family, rd, rest[:i], uint32(id)
}

// appendRIBKey appends the bmp.rib key: the route streams' key
// (router|peer RD|peer address|route RD|prefix) and |table|family|path id.
func appendRIBKey(b []byte, peer, rk string) []byte {
	router, _, peerRD, addr := splitPeer(peer)
	table, family, rd, prefix, pathID := splitRoute(rk)
	b = append(b, router...)
	b = append(b, '|')
	b = append(b, peerRD...)
	b = append(b, '|')
	b = append(b, addr...)
	b = append(b, '|')
	b = append(b, rd...)
	b = append(b, '|')
	b = append(b, prefix...)
	return appendRIBKeyTail(b, table, family, pathID)
}

// appendRIBKeyTail appends what a bmp.rib key adds to the route streams'
// key.
func appendRIBKeyTail(b []byte, table, family string, pathID uint32) []byte {
	b = append(b, '|')
	b = append(b, table...)
	b = append(b, '|')
	b = append(b, family...)
	b = append(b, '|')
	return strconv.AppendUint(b, uint64(pathID), 10)
}

// parser holds what parseRoute reuses between events: the buffer keys are
// built in, the peers and families seen, and the memory route keys live
// in. Not safe for concurrent use; the stage parses in one goroutine.
type parser struct {
	buf      []byte
	peers    map[string]*peerInfo // router, 0, peer object → the peer
	families map[string]string
	last     *peerInfo // the previous event's peer: most events repeat it
	keys     slab
}

// peerInfo is what the stage needs of a peer object.
type peerInfo struct {
	src string // router, 0, peer object: what it was read from
	key string // peerKey
	// stream is the route streams' key up to the route's distinguisher:
	// router|peer RD|peer address|.
	stream string
}

// maxPeers bounds parser.peers; past it the map starts again.
const maxPeers = 4096

// slab hands out strings carved from large byte slices, one allocation for
// hundreds of route keys instead of one each; a slice is freed once no
// string of it is referenced (they are never written again).
type slab struct{ b []byte }

func (s *slab) string(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if cap(s.b)-len(s.b) < len(b) {
		s.b = make([]byte, 0, max(16<<10, len(b)))
	}
	n := len(s.b)
	s.b = append(s.b, b...)
	return unsafe.String(&s.b[n], len(b))
}

func newParser() parser {
	return parser{peers: map[string]*peerInfo{}, families: map[string]string{}}
}

// intern returns the string of b from m, adding it; m is bounded by the
// families the state holds.
func intern(m map[string]string, b []byte) string {
	if s, ok := m[string(b)]; ok {
		return s
	}
	s := string(b)
	m[s] = s
	return s
}

// parseRoute reads a route event; ok is false for anything else and for
// routes the state does not track (families carried raw, with no prefix).
// End-of-RIB markers are returned with eor set.
func parseRoute(v []byte) (e event, ok bool) {
	p := newParser()
	return p.route(v, nil)
}

// route reads route event v; key is its route streams' key
// (router|peer RD|peer address|RD|prefix, bmp's eventKey), nil if unknown.
func (p *parser) route(v, key []byte) (e event, ok bool) {
	if !bytes.HasPrefix(v, routeEventPrefix) {
		return e, false
	}
	router, peerObj, routeObj, ok := routeEnvelope(v)
	if !ok {
		if peerObj, routeObj, ok = objects(v); !ok {
			return e, false
		}
		router = bytesField(v[:len(v)-len(routeObj)], `"router":"`)
	}
	pi := p.peer(router, peerObj)
	e.peer = pi.key
	h, ok := parseHead(routeObj)
	if !ok {
		h = searchHead(routeObj)
	}
	e.withdraw, e.eor, e.afi, e.safi, e.pathID = h.withdraw, h.eor, h.afi, h.safi, h.pathID
	e.family = intern(p.families, h.family)
	rib, policy, ok := parseTail(routeObj)
	if !ok {
		rib, policy = bytesField(routeObj, `"rib":"`), bytesField(routeObj, `"policy":"`)
	}
	switch {
	case string(rib) == "loc-rib":
		e.table = TableLocRIB
	case string(rib) == "adj-rib-out" && string(policy) == "post-policy":
		e.table = TableAdjOutPost
	case string(rib) == "adj-rib-out":
		e.table = TableAdjOutPre
	case string(policy) == "post-policy":
		e.table = TableAdjInPost
	default:
		e.table = TableAdjInPre
	}
	if e.eor {
		return e, true
	}
	if len(h.prefix) == 0 {
		return e, false
	}
	// The route's distinguisher: from the key, which ends with it and the
	// prefix, when the key is the one the encoder makes; else from the
	// route object, after its head.
	var rd []byte
	if k, ok := bytes.CutPrefix(key, []byte(pi.stream)); ok && len(k) > len(h.prefix) &&
		k[len(k)-len(h.prefix)-1] == '|' && bytes.HasSuffix(k, h.prefix) &&
		bytes.IndexByte(k[:len(k)-len(h.prefix)-1], '|') < 0 {
		rd = k[:len(k)-len(h.prefix)-1]
		e.streamKey = key
	} else {
		rd = bytesField(routeObj[h.end:], `"rd":"`)
		b := append(p.buf[:0], pi.stream...)
		b = append(b, rd...)
		b = append(b, '|')
		b = append(b, h.prefix...)
		e.streamKey, p.buf = b, b
	}
	// The route key, table|family|rd|prefix|path id, as rkey builds it.
	var kb [160]byte
	b := append(kb[:0], e.table...)
	b = append(b, '|')
	b = append(b, h.family...)
	b = append(b, '|')
	b = append(b, rd...)
	b = append(b, '|')
	b = append(b, h.prefix...)
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(e.pathID), 10)
	e.rk = p.keys.string(b)
	if !e.withdraw {
		e.hash = xxhash.Sum64(routeObj)
	}
	return e, true
}

// peer returns the peer of an event from its router and peer object.
func (p *parser) peer(router, peerObj []byte) *peerInfo {
	if l := p.last; l != nil && len(l.src) == len(router)+1+len(peerObj) &&
		l.src[:len(router)] == string(router) && l.src[len(router)+1:] == string(peerObj) {
		return l
	}
	b := append(append(append(p.buf[:0], router...), 0), peerObj...)
	p.buf = b
	pi, ok := p.peers[string(b)]
	if !ok {
		if len(p.peers) >= maxPeers {
			clear(p.peers)
		}
		rd, addr := bytesField(peerObj, `"rd":"`), bytesField(peerObj, `"address":"`)
		pi = &peerInfo{
			src:    string(b),
			key:    peerKey(string(router), string(bytesField(peerObj, `"type":"`)), string(rd), string(addr)),
			stream: string(router) + "|" + string(rd) + "|" + string(addr) + "|",
		}
		p.peers[pi.src] = pi
	}
	p.last = pi
	return pi
}

// routeEnvelope reads a route event's router, peer object and route object (each
// object with its braces) in the order the encoder writes the event; ok is
// false for any other layout (objects and bytesField then search for
// them) and for strings with escapes.
func routeEnvelope(v []byte) (router, peerObj, routeObj []byte, ok bool) {
	c := cursor{b: v, i: len(routeEventPrefix)}
	if !c.lit(`"id":"`) {
		return
	}
	if _, ok = c.str(); !ok || !c.lit(`,"agent":"`) {
		return nil, nil, nil, false
	}
	if _, ok = c.str(); !ok || !c.lit(`,"source":"bmp"`) {
		return nil, nil, nil, false
	}
	if c.lit(`,"router":"`) {
		if router, ok = c.str(); !ok {
			return nil, nil, nil, false
		}
	}
	if !c.lit(`,"seq":`) {
		return nil, nil, nil, false
	}
	c.num()
	if !c.lit(`,"received_at":"`) {
		return nil, nil, nil, false
	}
	if _, ok = c.str(); !ok {
		return nil, nil, nil, false
	}
	if c.lit(`,"timestamp":"`) {
		if _, ok = c.str(); !ok {
			return nil, nil, nil, false
		}
	}
	if !c.lit(`,"peer":{`) {
		return nil, nil, nil, false
	}
	j := bytes.IndexByte(v[c.i:], '}')
	if j < 0 {
		return nil, nil, nil, false
	}
	peerObj = v[c.i-1 : c.i+j+1]
	c.i += j + 1
	if !c.lit(`,"route":{`) || v[len(v)-1] != '}' {
		return nil, nil, nil, false
	}
	return router, peerObj, v[c.i-1 : len(v)-1], true
}

// head is what a route object says before its attributes.
type head struct {
	withdraw, eor  bool
	prefix, family []byte
	pathID         uint32
	afi            uint16
	safi           uint8
	end            int // where the head ends in the route object
}

// parseHead reads the head of a route object in the order the encoder
// writes it (docs/schema.md): action, prefix, path_id, afi, safi, family,
// end_of_rib. Searching each field from the object's start instead cost
// more than the rest of the stage per route (JSON is dense in the quotes
// and commas such a search starts from); ok is false for any other
// layout, which searchHead then reads.
func parseHead(o []byte) (h head, ok bool) {
	var c cursor
	c.b = o
	switch {
	case c.lit(`{"action":"announce"`):
	case c.lit(`{"action":"withdraw"`):
		h.withdraw = true
	default:
		return h, false
	}
	if c.lit(`,"prefix":"`) {
		if h.prefix, ok = c.str(); !ok {
			return h, false
		}
	}
	if c.lit(`,"path_id":`) {
		h.pathID = uint32(c.num())
	}
	if !c.lit(`,"afi":`) {
		return h, false
	}
	h.afi = uint16(c.num())
	if !c.lit(`,"safi":`) {
		return h, false
	}
	h.safi = uint8(c.num())
	if !c.lit(`,"family":"`) {
		return h, false
	}
	if h.family, ok = c.str(); !ok {
		return h, false
	}
	h.eor = c.lit(`,"end_of_rib":true`)
	h.end = c.i
	return h, true
}

// searchHead reads the head's fields wherever they are in the object.
func searchHead(o []byte) head {
	return head{
		withdraw: bytes.Equal(bytesField(o, `"action":"`), []byte("withdraw")),
		eor:      bytes.Contains(o, []byte(`"end_of_rib":true`)),
		prefix:   bytesField(o, `"prefix":"`),
		family:   bytesField(o, `"family":"`),
		pathID:   uint32(numField(o, `"path_id":`)),
		afi:      uint16(numField(o, `"afi":`)),
		safi:     uint8(numField(o, `"safi":`)),
	}
}

// parseTail reads the rib and policy a route object ends with:
// [,"policy":"P"],"rib":"R"}.
func parseTail(o []byte) (rib, policy []byte, ok bool) {
	if len(o) < 2 || o[len(o)-1] != '}' || o[len(o)-2] != '"' {
		return nil, nil, false
	}
	body := o[:len(o)-2]
	q := bytes.LastIndexByte(body, '"')
	if q < 0 || !bytes.HasSuffix(body[:q+1], []byte(`,"rib":"`)) {
		return nil, nil, false
	}
	rib, body = body[q+1:], body[:q+1-len(`,"rib":"`)]
	if len(body) > 0 && body[len(body)-1] == '"' {
		q = bytes.LastIndexByte(body[:len(body)-1], '"')
		if q >= 0 && bytes.HasSuffix(body[:q+1], []byte(`,"policy":"`)) {
			policy = body[q+1 : len(body)-1]
		}
	}
	return rib, policy, true
}

// cursor reads a JSON text the encoder wrote, front to back.
type cursor struct {
	b []byte
	i int
}

// lit consumes s if the text continues with it.
func (c *cursor) lit(s string) bool {
	if len(c.b)-c.i < len(s) || string(c.b[c.i:c.i+len(s)]) != s {
		return false
	}
	c.i += len(s)
	return true
}

// str consumes a string's rest up to its closing quote (the fields read
// this way never need escaping); ok is false at a backslash.
func (c *cursor) str() (s []byte, ok bool) {
	j := bytes.IndexByte(c.b[c.i:], '"')
	if j < 0 {
		return nil, false
	}
	s = c.b[c.i : c.i+j]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, false
	}
	c.i += j + 1
	return s, true
}

// num consumes an unsigned number.
func (c *cursor) num() uint64 {
	var n uint64
	for ; c.i < len(c.b) && c.b[c.i] >= '0' && c.b[c.i] <= '9'; c.i++ {
		n = n*10 + uint64(c.b[c.i]-'0')
	}
	return n
}

// parsePeerDown reads a peer-down event (real or synthetic).
func parsePeerDown(v []byte) (e event, ok bool) {
	if !bytes.HasPrefix(v, peerDownEventPrefix) {
		return e, false
	}
	i := bytes.Index(v, peerObjStart)
	if i < 0 {
		return e, false
	}
	end := bytes.IndexByte(v[i+len(peerObjStart):], '}')
	if end < 0 {
		return e, false
	}
	peerObj := v[i+len(peerObjStart)-1 : i+len(peerObjStart)+end+1]
	e.router = strField(v[:i], `"router":"`)
	e.peerRD, e.peerAddr = strField(peerObj, `"rd":"`), strField(peerObj, `"address":"`)
	e.peer = peerKey(e.router, strField(peerObj, `"type":"`), e.peerRD, e.peerAddr)
	e.envelope = envelopeOf(v)
	if e.envelope == nil {
		return e, false
	}
	e.peerJSON = e.envelope[bytes.Index(e.envelope, peerObjStart)+len(peerObjStart)-1:]
	return e, true
}

// envelopeOf is an event's JSON from ,"agent": through the peer object,
// the peer marked synthetic; nil if the event has no peer.
func envelopeOf(v []byte) []byte {
	i := bytes.Index(v, peerObjStart)
	a := bytes.Index(v, agentField)
	if i < 0 || a < 0 || a > i {
		return nil
	}
	end := bytes.IndexByte(v[i+len(peerObjStart):], '}')
	if end < 0 {
		return nil
	}
	peerObj := v[i+len(peerObjStart)-1 : i+len(peerObjStart)+end+1]
	env := append([]byte(nil), v[a:i+len(peerObjStart)+end]...)
	if !bytes.Contains(peerObj, []byte(`"synthetic":true`)) {
		env = append(env, `,"synthetic":true`...)
	}
	return append(env, '}')
}

// objects returns the peer object and the route object (each with its
// braces; the route object is the event's last field).
func objects(v []byte) (peerObj, routeObj []byte, ok bool) {
	i := indexKey(v, string(peerObjStart))
	if i < 0 {
		return nil, nil, false
	}
	end := bytes.IndexByte(v[i+len(peerObjStart):], '}')
	if end < 0 {
		return nil, nil, false
	}
	peerObj = v[i+len(peerObjStart)-1 : i+len(peerObjStart)+end+1]
	rest := i + len(peerObjStart) + end + 1
	j := indexKey(v[rest:], string(routeObjStart))
	if j < 0 || len(v) < 2 || v[len(v)-1] != '}' {
		return nil, nil, false
	}
	return peerObj, v[rest+j+len(routeObjStart)-1 : len(v)-1], true
}

// bytesField is the string value of the first `"name":"` in obj, in obj.
func bytesField(obj []byte, name string) []byte {
	i := indexKey(obj, name)
	if i < 0 {
		return nil
	}
	rest := obj[i+len(name):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}

// indexKey is bytes.Index(obj, key) for a key that starts with
// punctuation (a quote, a comma) and then a letter: it searches from the
// letter, as JSON text has a quote or a comma every few bytes (a search
// for them stops at every one) and letters of a given kind far less often.
func indexKey(obj []byte, key string) int {
	k := 0
	for k < len(key) && (key[k] == '"' || key[k] == ',') {
		k++
	}
	for off := 0; ; {
		i := bytes.Index(obj[off:], []byte(key[k:]))
		if i < 0 {
			return -1
		}
		if i += off; i >= k && string(obj[i-k:i]) == key[:k] {
			return i - k
		}
		off = i + 1
	}
}

// strField is the string value of the first `"name":"` in obj.
func strField(obj []byte, name string) string {
	i := indexKey(obj, name)
	if i < 0 {
		return ""
	}
	rest := obj[i+len(name):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// numField is the unsigned number after the first `"name":` in obj.
func numField(obj []byte, name string) uint64 {
	i := indexKey(obj, name)
	if i < 0 {
		return 0
	}
	var n uint64
	for _, c := range obj[i+len(name):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}

// markDuplicate returns a copy of a route event with route.duplicate set.
func markDuplicate(v []byte) []byte {
	out := make([]byte, 0, len(v)+18)
	out = append(out, v[:len(v)-2]...)
	out = append(out, `,"duplicate":true}}`...)
	return out
}

// withdrawEvent builds a synthetic withdraw of route rk of a peer, from a
// peer-down's envelope (agent through peer object, marked synthetic).
func withdrawEvent(id string, envelope []byte, rk string, afi uint16, safi uint8) []byte {
	table, family, rd, prefix, pathID := splitRoute(rk)
	b := make([]byte, 0, len(envelope)+len(id)+len(rk)+160)
	b = append(b, `{"v":1,"type":"route","id":"`...)
	b = append(b, id...)
	b = append(b, '"')
	b = append(b, envelope...)
	b = append(b, `,"route":{"action":"withdraw","prefix":"`...)
	b = append(b, prefix...)
	b = append(b, '"')
	if pathID != 0 {
		b = append(b, `,"path_id":`...)
		b = strconv.AppendUint(b, uint64(pathID), 10)
	}
	b = append(b, `,"afi":`...)
	b = strconv.AppendUint(b, uint64(afi), 10)
	b = append(b, `,"safi":`...)
	b = strconv.AppendUint(b, uint64(safi), 10)
	b = append(b, `,"family":"`...)
	b = append(b, family...)
	b = append(b, '"')
	if rd != "" {
		b = append(b, `,"rd":"`...)
		b = append(b, rd...)
		b = append(b, '"')
	}
	rib, policy := tableRIB(table)
	if policy != "" {
		b = append(b, `,"policy":"`...)
		b = append(b, policy...)
		b = append(b, '"')
	}
	b = append(b, `,"rib":"`...)
	b = append(b, rib...)
	return append(b, `"}}`...)
}

// tableRIB is the event's rib and policy of a table.
func tableRIB(table string) (rib, policy string) {
	switch table {
	case TableAdjInPost:
		return "adj-rib-in", "post-policy"
	case TableAdjOutPre:
		return "adj-rib-out", "pre-policy"
	case TableAdjOutPost:
		return "adj-rib-out", "post-policy"
	case TableLocRIB:
		return "loc-rib", ""
	}
	return "adj-rib-in", "pre-policy"
}

// Route streams per table, as the BMP encoder names them.
func tableStream(table string) string {
	switch table {
	case TableAdjInPost:
		return "bmp.route.post-policy"
	case TableAdjOutPre, TableAdjOutPost:
		return "bmp.route.adj-rib-out"
	case TableLocRIB:
		return "bmp.route.loc-rib"
	}
	return "bmp.route.pre-policy"
}

// routeStreamKey is the route streams' key of a route (bmp.eventKey).
func routeStreamKey(peer, rk string) []byte {
	router, _, peerRD, addr := splitPeer(peer)
	_, _, rd, prefix, _ := splitRoute(rk)
	return []byte(router + "|" + peerRD + "|" + addr + "|" + rd + "|" + prefix)
}
