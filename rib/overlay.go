package rib

// ovRoutes finds the overlay's newest change of each route by its index
// hash. It replaces a Go map of the changes' values, which cost about 0.7
// µs of CPU per route event with the route state on (docs/BENCHMARKS.md):
// the map hashed the hash again, its entries were 56 bytes, and every
// commit deleted most of them, leaving tombstones that lengthened its
// probes until it was rebuilt. Here a slot is 16 bytes, the route's h[0]
// and the generation of its newest change: the change itself, with the
// full hash, is in the stage's ops (gen − ops[0].gen, as ops are
// consecutive generations). h[0] picks the slot (it is a hash already),
// probing is linear, and a removal moves the rest of its run back (as in
// the index), so a probe ends at the first empty slot.
type ovRoutes struct {
	slots []ovSlotTag // a power of two, at most three quarters full
	n     int
	// touched is the touch functions' sum, kept only so that their reads
	// stay; like the rest, written under the stage's mu.
	touched uint64
}

type ovSlotTag struct {
	h0  uint64 // the route's h[0]; 0: empty (an index hash has h[0] odd)
	gen uint64
}

const minOvSlots = 1 << 10

// len is how many routes the table holds.
func (t *ovRoutes) len() int { return t.n }

func (t *ovRoutes) home(h0 uint64) uint64 { return (h0 >> 1) & uint64(len(t.slots)-1) }

// find returns the slot of h, or the empty slot where it would go. ops
// holds the change of every entry; the table must have slots.
func (t *ovRoutes) find(h ixHash, ops []op) (i uint64, found bool) {
	mask := uint64(len(t.slots) - 1)
	for i = t.home(h[0]); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.h0 == 0 {
			return i, false
		}
		// h[0] alone may be shared (one in 2⁶⁴): the change has all of h.
		if s.h0 == h[0] && ops[s.gen-ops[0].gen].h == h {
			return i, true
		}
	}
}

// get returns h's newest change in ops.
func (t *ovRoutes) get(h ixHash, ops []op) (*op, bool) {
	if t.n == 0 {
		return nil, false
	}
	i, ok := t.find(h, ops)
	if !ok {
		return nil, false
	}
	return &ops[t.slots[i].gen-ops[0].gen], true
}

// gen returns the generation of h's newest change, 0 if none.
func (t *ovRoutes) gen(h ixHash, ops []op) uint64 {
	if o, ok := t.get(h, ops); ok {
		return o.gen
	}
	return 0
}

// put makes change gen, already in ops, h's newest and reports whether h
// was new to the table.
func (t *ovRoutes) put(h ixHash, gen uint64, ops []op) bool {
	if 4*(t.n+1) > 3*len(t.slots) {
		t.grow()
	}
	i, found := t.find(h, ops)
	t.slots[i] = ovSlotTag{h0: h[0], gen: gen}
	if !found {
		t.n++
	}
	return !found
}

// removeGen removes h's entry if change gen is its newest (not a later
// one) and reports whether it did. Generations are unique: h[0] and gen
// name the entry without reading the change.
func (t *ovRoutes) removeGen(h ixHash, gen uint64) bool {
	if t.n == 0 {
		return false
	}
	mask := uint64(len(t.slots) - 1)
	i := t.home(h[0])
	for ; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.h0 == 0 {
			return false
		}
		if s.h0 == h[0] && s.gen == gen {
			break
		}
	}
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		s := &t.slots[j]
		if s.h0 == 0 {
			break
		}
		// The entry at j may move to i when its home is not in (i, j]
		// (cyclically).
		home := t.home(s.h0)
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			t.slots[i] = *s
			i = j
		}
	}
	t.slots[i] = ovSlotTag{}
	t.n--
	return true
}

// touchPrepared touches the overlay counters and home slots of the route
// events Prefetch read, as index.touchPrepared does the index's: the
// table is about a megabyte when the overlay is full, and the look-up and
// the change that follow read the same words. Called with the stage's mu.
func (t *ovRoutes) touchPrepared(ps []prepared, count *[1 << 16]uint16) {
	if len(t.slots) == 0 {
		return
	}
	for i := range ps {
		if ps[i].ready {
			t.touched += uint64(count[ovSlot(ps[i].h)]) + t.slots[t.home(ps[i].h[0])].h0
		}
	}
}

// touchOps touches the home slots of a commit's route changes before it
// removes them from the table, a run at once.
func (t *ovRoutes) touchOps(ops []op) {
	if len(t.slots) == 0 {
		return
	}
	for i := range ops {
		if k := ops[i].kind; k == opSet || k == opDel {
			t.touched += t.slots[t.home(ops[i].h[0])].h0
		}
	}
}

// grow doubles the table (or makes the first one), reinserting every entry
// at the first empty slot of its run (entries are distinct).
func (t *ovRoutes) grow() {
	old := t.slots
	t.slots = make([]ovSlotTag, max(minOvSlots, 2*len(old)))
	mask := uint64(len(t.slots) - 1)
	for _, s := range old {
		if s.h0 == 0 {
			continue
		}
		i := t.home(s.h0)
		for t.slots[i].h0 != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

// each calls fn with every entry's h[0] and generation, in no order.
func (t *ovRoutes) each(fn func(h0, gen uint64)) {
	for _, s := range t.slots {
		if s.h0 != 0 {
			fn(s.h0, s.gen)
		}
	}
}
