package rib

// ovRoutes holds the overlay's newest change of each route by its index
// hash. It replaces a Go map, which cost about 0.7 µs of CPU per route
// event with the route state on (docs/BENCHMARKS.md): the map hashed the
// hash again, and every commit deleted most of its entries, leaving
// tombstones that lengthened its probes until it was rebuilt. Here h[1],
// already a hash, picks the slot, probing is linear, and a removal moves
// the rest of its run back (as in the index), so a probe ends at the first
// empty slot and a slot is about one cache line.
type ovRoutes struct {
	slots []ovRouteSlot // a power of two, at most maxOvLoad full
	n     int
}

type ovRouteSlot struct {
	h ixHash // h[0] == 0: empty (an index hash has h[0] odd)
	e ovEntry
}

const minOvSlots = 1 << 10

// len is how many routes the table holds.
func (t *ovRoutes) len() int { return t.n }

// find returns the slot of h, or the empty slot where it would go; the
// table must have slots.
func (t *ovRoutes) find(h ixHash) (i uint64, found bool) {
	mask := uint64(len(t.slots) - 1)
	for i = h[1] & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.h[0] == 0 {
			return i, false
		}
		if s.h == h {
			return i, true
		}
	}
}

// get returns h's entry.
func (t *ovRoutes) get(h ixHash) (ovEntry, bool) {
	if t.n == 0 {
		return ovEntry{}, false
	}
	i, ok := t.find(h)
	if !ok {
		return ovEntry{}, false
	}
	return t.slots[i].e, true
}

// put sets h's entry and reports whether h was new to the table.
func (t *ovRoutes) put(h ixHash, e ovEntry) bool {
	if 4*(t.n+1) > 3*len(t.slots) {
		t.grow()
	}
	i, found := t.find(h)
	t.slots[i] = ovRouteSlot{h: h, e: e}
	if !found {
		t.n++
	}
	return !found
}

// removeGen removes h's entry if it is change gen, not a newer one, and
// reports whether it did.
func (t *ovRoutes) removeGen(h ixHash, gen uint64) bool {
	if t.n == 0 {
		return false
	}
	i, ok := t.find(h)
	if !ok || t.slots[i].e.gen != gen {
		return false
	}
	mask := uint64(len(t.slots) - 1)
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		s := &t.slots[j]
		if s.h[0] == 0 {
			break
		}
		// The entry at j may move to i when its home is not in (i, j]
		// (cyclically).
		home := s.h[1] & mask
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			t.slots[i] = *s
			i = j
		}
	}
	t.slots[i] = ovRouteSlot{}
	t.n--
	return true
}

// grow doubles the table (or makes the first one), reinserting every entry.
func (t *ovRoutes) grow() {
	old := t.slots
	t.slots = make([]ovRouteSlot, max(minOvSlots, 2*len(old)))
	for k := range old {
		if old[k].h[0] != 0 {
			i, _ := t.find(old[k].h)
			t.slots[i] = old[k]
		}
	}
}

// each calls fn with every entry, in no order.
func (t *ovRoutes) each(fn func(ixHash, ovEntry)) {
	for k := range t.slots {
		if t.slots[k].h[0] != 0 {
			fn(t.slots[k].h, t.slots[k].e)
		}
	}
}
