package rib

import (
	"encoding/binary"
	"fmt"
)

// A peer's routes are stored groupSize positions to a bbolt entry: a
// commit of new routes puts one entry per groupSize routes, not one per
// route. Each bbolt Put searches the B+tree from its root and allocates
// as it goes; one per route was the largest part of a commit's cost.
// Changing a route rewrites its group (about 1 KB), which costs little
// more than rewriting the route alone: bbolt writes whole pages either
// way.
const (
	groupBits = 4
	groupSize = 1 << groupBits
)

// groupRoute is one route of a group: its slot (position % groupSize),
// value and route key. Decoded, rk points into the entry's bytes.
type groupRoute struct {
	slot uint8
	val  routeValue
	rk   string
}

// A group's value is its routes in slot order, each: slot (1 byte), route
// value (routeValueLen bytes), route key length (uvarint), route key.

// decodeGroup appends the routes of the group entry k, v to out; their keys
// point into v.
func decodeGroup(k, v []byte, out []groupRoute) ([]groupRoute, error) {
	if len(k) != 8 {
		return out, fmt.Errorf("route group %x: %w", k, errCorrupt)
	}
	last := -1
	for len(v) > 0 {
		if len(v) < 1+routeValueLen+1 {
			return out, fmt.Errorf("route group %x: %w", k, errCorrupt)
		}
		slot := v[0]
		val := decodeRoute(v[1:])
		v = v[1+routeValueLen:]
		n, w := binary.Uvarint(v)
		if w <= 0 || n > uint64(len(v)-w) || int(slot) <= last || slot >= groupSize {
			return out, fmt.Errorf("route group %x: %w", k, errCorrupt)
		}
		last = int(slot)
		out = append(out, groupRoute{slot: slot, val: val, rk: bytesString(v[w : w+int(n)])})
		v = v[w+int(n):]
	}
	if last < 0 {
		return out, fmt.Errorf("route group %x: empty: %w", k, errCorrupt)
	}
	return out, nil
}

// appendGroup appends the entry value of routes rs, in slot order.
func appendGroup(b []byte, rs []groupRoute) []byte {
	for _, r := range rs {
		b = append(b, r.slot)
		var v [routeValueLen]byte
		r.val.put(v[:])
		b = append(b, v[:]...)
		b = binary.AppendUvarint(b, uint64(len(r.rk)))
		b = append(b, r.rk...)
	}
	return b
}

// groupLen is len(appendGroup(nil, rs)).
func groupLen(rs []groupRoute) int {
	n := 0
	var v [binary.MaxVarintLen64]byte
	for _, r := range rs {
		n += 1 + routeValueLen + len(binary.AppendUvarint(v[:0], uint64(len(r.rk)))) + len(r.rk)
	}
	return n
}

// groupPos is the position of slot in group entry k.
func groupPos(k []byte, slot uint8) uint64 {
	return binary.BigEndian.Uint64(k)*groupSize + uint64(slot)
}

// groupEdit is the group a commit is changing: loaded once, changed by
// each of its routes' changes in a row (a commit applies them in position
// order), written back once.
type groupEdit struct {
	p      *peerTx
	g      uint64
	rs     []groupRoute
	dirty  bool
	active bool
}

// set holds route rk with value v in slot.
func (e *groupEdit) set(slot uint8, v routeValue, rk string) {
	e.dirty = true
	for i := range e.rs {
		switch {
		case e.rs[i].slot == slot:
			e.rs[i].val, e.rs[i].rk = v, rk
			return
		case e.rs[i].slot > slot:
			e.rs = append(e.rs, groupRoute{})
			copy(e.rs[i+1:], e.rs[i:])
			e.rs[i] = groupRoute{slot: slot, val: v, rk: rk}
			return
		}
	}
	e.rs = append(e.rs, groupRoute{slot: slot, val: v, rk: rk})
}

// del forgets the route in slot.
func (e *groupEdit) del(slot uint8) {
	for i := range e.rs {
		if e.rs[i].slot == slot {
			e.rs = append(e.rs[:i], e.rs[i+1:]...)
			e.dirty = true
			return
		}
	}
}
