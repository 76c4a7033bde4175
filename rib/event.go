package rib

import (
	"bytes"
	"strconv"
	"strings"

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

// ribKey is the bmp.rib key: the route streams' key
// (router|peer RD|peer address|route RD|prefix) and |table|family|path id.
func ribKey(peer, rk string) []byte {
	router, _, peerRD, addr := splitPeer(peer)
	table, family, rd, prefix, pathID := splitRoute(rk)
	b := make([]byte, 0, len(peer)+len(rk)+8)
	b = append(b, router...)
	b = append(b, '|')
	b = append(b, peerRD...)
	b = append(b, '|')
	b = append(b, addr...)
	b = append(b, '|')
	b = append(b, rd...)
	b = append(b, '|')
	b = append(b, prefix...)
	b = append(b, '|')
	b = append(b, table...)
	b = append(b, '|')
	b = append(b, family...)
	b = append(b, '|')
	return strconv.AppendUint(b, uint64(pathID), 10)
}

// parser holds what parseRoute reuses between events: the buffer keys are
// built in and the peer keys and families seen, so that a route event
// costs one allocation (its route key) rather than one per field. Not safe
// for concurrent use; the stage parses in one goroutine.
type parser struct {
	buf      []byte
	peers    map[string]string
	families map[string]string
}

// intern returns the string of b from m, adding it; m is bounded by the
// peers (families) the state holds.
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
	return (&parser{peers: map[string]string{}, families: map[string]string{}}).route(v)
}

func (p *parser) route(v []byte) (e event, ok bool) {
	if !bytes.HasPrefix(v, routeEventPrefix) {
		return e, false
	}
	peerObj, routeObj, ok := objects(v)
	if !ok {
		return e, false
	}
	// The peer key, router|type|rd|address, as peerKey builds it.
	b := append(p.buf[:0], bytesField(v[:len(v)-len(routeObj)], `"router":"`)...)
	b = append(b, '|')
	b = append(b, bytesField(peerObj, `"type":"`)...)
	b = append(b, '|')
	b = append(b, bytesField(peerObj, `"rd":"`)...)
	b = append(b, '|')
	b = append(b, bytesField(peerObj, `"address":"`)...)
	e.peer = intern(p.peers, b)
	e.withdraw = bytes.HasPrefix(routeObj, []byte(`{"action":"withdraw"`))
	family := bytesField(routeObj, `"family":"`)
	e.family = intern(p.families, family)
	e.afi = uint16(numField(routeObj, `"afi":`))
	e.safi = uint8(numField(routeObj, `"safi":`))
	e.eor = bytes.Contains(routeObj, []byte(`"end_of_rib":true`))
	switch rib, policy := bytesField(routeObj, `"rib":"`), bytesField(routeObj, `"policy":"`); {
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
		p.buf = b
		return e, true
	}
	prefix := bytesField(routeObj, `"prefix":"`)
	if len(prefix) == 0 {
		p.buf = b
		return e, false
	}
	e.pathID = uint32(numField(routeObj, `"path_id":`))
	// The route key, table|family|rd|prefix|path id, as rkey builds it.
	b = append(b[:0], e.table...)
	b = append(b, '|')
	b = append(b, family...)
	b = append(b, '|')
	b = append(b, bytesField(routeObj, `"rd":"`)...)
	b = append(b, '|')
	b = append(b, prefix...)
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(e.pathID), 10)
	e.rk = string(b)
	p.buf = b
	if !e.withdraw {
		e.hash = xxhash.Sum64(routeObj)
	}
	return e, true
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
	i := bytes.Index(v, peerObjStart)
	if i < 0 {
		return nil, nil, false
	}
	end := bytes.IndexByte(v[i+len(peerObjStart):], '}')
	if end < 0 {
		return nil, nil, false
	}
	peerObj = v[i+len(peerObjStart)-1 : i+len(peerObjStart)+end+1]
	rest := i + len(peerObjStart) + end + 1
	j := bytes.Index(v[rest:], routeObjStart)
	if j < 0 || len(v) < 2 || v[len(v)-1] != '}' {
		return nil, nil, false
	}
	return peerObj, v[rest+j+len(routeObjStart)-1 : len(v)-1], true
}

// bytesField is the string value of the first `"name":"` in obj, in obj.
func bytesField(obj []byte, name string) []byte {
	i := bytes.Index(obj, []byte(name))
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

// strField is the string value of the first `"name":"` in obj.
func strField(obj []byte, name string) string {
	i := bytes.Index(obj, []byte(name))
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
	i := bytes.Index(obj, []byte(name))
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
