package rib

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"sync"
)

// IndexFileName is the route index's file inside the state directory.
const IndexFileName = "rib.index"

// index finds a committed route by its peer and route key: its position in
// the peer's bucket of rib.db and its value. Without it every route event
// was a B+tree search of rib.db, and every new route a B+tree insert at a
// random place (routers send their tables in no key order), a page written
// per route at each commit; with it rib.db's route buckets are keyed by
// position, so new routes are appended.
//
// It is derived data: rebuilt from rib.db at every open, never synced, so a
// crash cannot leave it disagreeing with the file. It lives in a
// file-backed shared mapping (rib.index, open addressing with linear
// probing, slotSize bytes a slot), not in the heap: 50 M routes need about
// 3 GB of slots, which the kernel pages in and out like rib.db's own pages
// instead of the agent's anonymous memory holding them.
//
// A slot holds a 127-bit hash of the peer and route key, not the keys: two
// routes in the state collide with a probability of about n²/2¹²⁸ (10⁻²³
// for 50 M routes), with seeds chosen at each open.
type index struct {
	mu    sync.RWMutex
	dir   string
	mem   []byte
	file  *os.File
	mask  uint64 // slots - 1
	used  uint64
	seeds [2]maphash.Seed
}

// ixHash is a route's hash in the index; h[0] is never 0 (an empty slot).
type ixHash [2]uint64

// slotSize: hash (16), position (8), route value (15), padding (1).
const slotSize = 40

// minSlots is the smallest table: 2.6 MB of file, mostly never touched.
const minSlots = 1 << 16

func newIndex(dir string, routes uint64) (*index, error) {
	ix := &index{dir: dir, seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
	if err := ix.alloc(slotsFor(routes)); err != nil {
		return nil, err
	}
	return ix, nil
}

// slotsFor is a table size that holds n routes at most half full.
func slotsFor(n uint64) uint64 {
	s := uint64(minSlots)
	for s < 2*n {
		s <<= 1
	}
	return s
}

func (ix *index) hash(peer, rk string) ixHash {
	var h maphash.Hash
	var out ixHash
	for i := range out {
		h.SetSeed(ix.seeds[i])
		h.WriteString(peer)
		h.WriteByte(0)
		h.WriteString(rk)
		out[i] = h.Sum64()
	}
	out[0] |= 1
	return out
}

// alloc replaces the table with an empty one of slots slots.
func (ix *index) alloc(slots uint64) error {
	path := filepath.Join(ix.dir, IndexFileName)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("rib: index: %w", err)
	}
	mem, err := mapFile(f, int(slots*slotSize))
	if err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("rib: index: map %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = unmapFile(mem)
		_ = f.Close()
		return fmt.Errorf("rib: index: %w", err)
	}
	ix.release()
	ix.mem, ix.file, ix.mask, ix.used = mem, f, slots-1, 0
	return nil
}

func (ix *index) release() {
	if ix.mem != nil {
		_ = unmapFile(ix.mem)
		_ = ix.file.Close()
		ix.mem, ix.file = nil, nil
	}
}

// close releases the table and removes its file (it is rebuilt at open).
func (ix *index) close() {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.release()
	_ = os.Remove(filepath.Join(ix.dir, IndexFileName))
}

func (ix *index) slot(i uint64) []byte { return ix.mem[i*slotSize : (i+1)*slotSize : (i+1)*slotSize] }

// find returns the slot of h, or the empty slot where it would go.
func (ix *index) find(h ixHash) (i uint64, found bool) {
	for i = h[1] & ix.mask; ; i = (i + 1) & ix.mask {
		s := ix.slot(i)
		h0 := binary.LittleEndian.Uint64(s)
		if h0 == 0 {
			return i, false
		}
		if h0 == h[0] && binary.LittleEndian.Uint64(s[8:]) == h[1] {
			return i, true
		}
	}
}

// get returns a committed route's position and value.
func (ix *index) get(h ixHash) (pos uint64, v routeValue, ok bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	i, ok := ix.find(h)
	if !ok {
		return 0, routeValue{}, false
	}
	s := ix.slot(i)
	return binary.LittleEndian.Uint64(s[16:]), decodeRoute(s[24:]), true
}

// ixChange is a committed change of the index: set (pos, val) or delete.
type ixChange struct {
	h   ixHash
	pos uint64
	val routeValue
	del bool
}

// apply makes a commit's changes, in order.
func (ix *index) apply(cs []ixChange) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for i := range cs {
		if cs[i].del {
			ix.del(cs[i].h)
			continue
		}
		if err := ix.set(cs[i].h, cs[i].pos, cs[i].val); err != nil {
			return err
		}
	}
	return nil
}

func (ix *index) set(h ixHash, pos uint64, v routeValue) error {
	i, found := ix.find(h)
	if !found {
		if (ix.used+1)*10 > (ix.mask+1)*7 {
			if err := ix.grow(); err != nil {
				return err
			}
			i, _ = ix.find(h)
		}
		ix.used++
	}
	s := ix.slot(i)
	binary.LittleEndian.PutUint64(s, h[0])
	binary.LittleEndian.PutUint64(s[8:], h[1])
	binary.LittleEndian.PutUint64(s[16:], pos)
	v.put(s[24:])
	return nil
}

// del removes h, moving back the entries after it in its run that could
// live in its slot (so no tombstones: a probe stops at the first empty
// slot).
func (ix *index) del(h ixHash) {
	i, found := ix.find(h)
	if !found {
		return
	}
	for j := (i + 1) & ix.mask; ; j = (j + 1) & ix.mask {
		s := ix.slot(j)
		if binary.LittleEndian.Uint64(s) == 0 {
			break
		}
		home := binary.LittleEndian.Uint64(s[8:]) & ix.mask
		// The entry at j may move to i when its home is not in (i, j]
		// (cyclically).
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			copy(ix.slot(i), s)
			i = j
		}
	}
	clear(ix.slot(i))
	ix.used--
}

// grow doubles the table, reinserting every entry.
func (ix *index) grow() error {
	old, oldFile, oldMask := ix.mem, ix.file, ix.mask
	ix.mem, ix.file = nil, nil // alloc must not release them yet
	if err := ix.alloc((oldMask + 1) * 2); err != nil {
		ix.mem, ix.file = old, oldFile
		return err
	}
	for i := uint64(0); i <= oldMask; i++ {
		s := old[i*slotSize : (i+1)*slotSize]
		if binary.LittleEndian.Uint64(s) == 0 {
			continue
		}
		h := ixHash{binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])}
		j, _ := ix.find(h)
		copy(ix.slot(j), s)
		ix.used++
	}
	_ = unmapFile(old)
	_ = oldFile.Close()
	return nil
}
