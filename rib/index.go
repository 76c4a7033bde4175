package rib

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"

	"github.com/cespare/xxhash/v2"

	"github.com/bgpedge/bgpedge/internal/atomicfile"
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
// It is derived data, never synced while the agent runs: a clean close
// syncs it and leaves a mark (rib.index.clean) naming rib.db's last
// transaction, and the next open reuses it only if the mark is there and
// names the same transaction, removing the mark before anything changes
// the index; any other open (after a crash, a failed close) rebuilds it
// from rib.db, so a crash cannot leave it disagreeing with the file. It lives in a
// file-backed shared mapping (rib.index, open addressing with linear
// probing, slotSize bytes a slot), not in the heap: 50 M routes need about
// 3 GB of slots, which the kernel pages in and out like rib.db's own pages
// instead of the agent's anonymous memory holding them.
//
// A slot holds a 127-bit hash of the peer and route key, not the keys: two
// routes in the state collide with a probability of about n²/2¹²⁸ (10⁻²³
// for 50 M routes), with seeds chosen when the index is built (kept in the mark).
type index struct {
	mu    sync.RWMutex
	dir   string
	mem   []byte
	file  *os.File
	mask  uint64 // slots - 1
	used  uint64
	seeds [2]uint64
	// touched is touch's sum, written under the write lock only.
	touched uint64
	// next is the doubled table while it is being built, nil otherwise;
	// only the writer (apply, set, del) uses it.
	next  *growth
	grows growthCounts
	// growthErr is why the last growth could not start; growthErrNew
	// says it has not been reported yet (growthFailure).
	growthErr    error
	growthErrNew bool
}

// growthCounts counts how the table grew (tests).
type growthCounts struct {
	started  int // growths started at 60 %
	ended    int // by apply's slices
	finished int // at once, by reserve, a set or a clean close
	rehashed int // tables built in one go, with no growth in progress
	dropped  int // growths that ended disagreeing with the table
}

// growth is a doubling of the table in progress. Once the table is 60 %
// full, each apply copies a slice of it into a table twice its size, and
// makes its own changes in both; look-ups go on reading the current table,
// which stays complete, until the copy reaches its end and the tables are
// swapped. Built in one go, the last doubling of a 4.2 M-route run took
// 1.3 s of a commit, during which the forwarder's decisions waited for the
// commit's overlay of changes to drain; in slices, no commit of that run
// spent more than 0.18 s on the index.
//
// Its invariant: every entry of next is in the current table with the same
// position and value, and every entry of the current table's slots below
// cursor is in next. So when cursor reaches the end the two hold the same
// entries.
type growth struct {
	mem    []byte
	file   *os.File
	mask   uint64
	used   uint64
	cursor uint64
}

// ixHash is a route's hash in the index; h[0] is never 0 (an empty slot).
type ixHash [2]uint64

// slotSize: hash (16), position (8), route value (15), padding (1).
const slotSize = 40

// minSlots is the smallest table: 2.6 MB of file, mostly never touched.
const minSlots = 1 << 16

func newIndex(dir string, routes uint64) (*index, error) {
	ix := &index{dir: dir, seeds: [2]uint64{rand.Uint64(), rand.Uint64()}}
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

// hash is two xxHash64s of a seed, the peer, 0 and the route key: one
// call each over one buffer, which costs a third of a streaming digest's.
func (ix *index) hash(peer, rk string) ixHash {
	var buf [160]byte
	b := append(buf[:8], peer...)
	b = append(b, 0)
	b = append(b, rk...)
	var out ixHash
	for i := range out {
		binary.LittleEndian.PutUint64(b, ix.seeds[i])
		out[i] = xxhash.Sum64(b)
	}
	out[0] |= 1
	return out
}

// alloc replaces the table with an empty one of slots slots.
func (ix *index) alloc(slots uint64) error {
	mem, f, err := newTable(ix.dir, slots)
	if err != nil {
		return err
	}
	ix.release()
	ix.mem, ix.file, ix.mask, ix.used = mem, f, slots-1, 0
	return nil
}

// newTable makes the file of an empty table of slots slots, in place of
// the index's file (a table still mapped keeps its memory), and maps it.
func newTable(dir string, slots uint64) ([]byte, *os.File, error) {
	path := filepath.Join(dir, IndexFileName)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("rib: index: %w", err)
	}
	mem, err := mapFile(f, int(slots*slotSize))
	if err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return nil, nil, fmt.Errorf("rib: index: map %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = unmapFile(mem)
		_ = f.Close()
		return nil, nil, fmt.Errorf("rib: index: %w", err)
	}
	return mem, f, nil
}

func (ix *index) release() {
	if ix.mem != nil {
		_ = unmapFile(ix.mem)
		_ = ix.file.Close()
		ix.mem, ix.file = nil, nil
	}
	if ix.next != nil {
		_ = unmapFile(ix.next.mem)
		_ = ix.next.file.Close()
		ix.next = nil
	}
}

// close releases the table and removes its file (it is rebuilt at open).
func (ix *index) close() {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.release()
	_ = os.Remove(filepath.Join(ix.dir, IndexFileName))
}

// IndexMarkName is the file a clean close leaves beside rib.index: the
// index matches rib.db as of the transaction it names.
const IndexMarkName = "rib.index.clean"

// indexMark is what the mark holds: the table's size and entries, its
// hash seeds and rib.db's last transaction.
type indexMark struct {
	slots, used uint64
	seeds       [2]uint64
	dbTx        uint64
}

var indexMarkMagic = [8]byte{'b', 'g', 'p', 'e', 'r', 'i', 'x', '1'}

const indexMarkLen = 8 + 5*8 + 4

func (m indexMark) encode() []byte {
	b := append([]byte(nil), indexMarkMagic[:]...)
	for _, v := range []uint64{m.slots, m.used, m.seeds[0], m.seeds[1], m.dbTx} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
}

func decodeIndexMark(b []byte) (m indexMark, ok bool) {
	if len(b) != indexMarkLen || [8]byte(b[:8]) != indexMarkMagic ||
		binary.BigEndian.Uint32(b[indexMarkLen-4:]) != crc32.ChecksumIEEE(b[:indexMarkLen-4]) {
		return m, false
	}
	v := func(i int) uint64 { return binary.BigEndian.Uint64(b[8+8*i:]) }
	return indexMark{slots: v(0), used: v(1), seeds: [2]uint64{v(2), v(3)}, dbTx: v(4)}, true
}

// closeClean releases the table and keeps its file for the next open,
// marked as matching rib.db as of transaction dbTx; when that fails the
// file is removed instead.
func (ix *index) closeClean(dbTx uint64) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	path := filepath.Join(ix.dir, IndexFileName)
	// The file of a growth in progress has replaced the current table's
	// at its path already.
	ix.finishGrowthLocked()
	m := indexMark{slots: ix.mask + 1, used: ix.used, seeds: ix.seeds, dbTx: dbTx}
	err := syncMapping(ix.mem)
	if err == nil {
		err = ix.file.Sync()
	}
	ix.release()
	if err == nil {
		err = atomicfile.Write(filepath.Join(ix.dir, IndexMarkName), m.encode())
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("rib: index: keep: %w", err)
	}
	return nil
}

// errHeapIndex: an index in the heap (systems without mmap) is not kept
// across opens.
var errHeapIndex = errors.New("the index is not kept on this system")

// errNoMark: no clean close left the index to reuse.
var errNoMark = errors.New("no mark of a clean close")

// reuseIndex opens the index a clean close left, if its mark names dbTx
// (rib.db's last transaction) and routes entries. The mark is removed
// first, before anything can change the index: only the open right after
// a clean close reuses it.
func reuseIndex(dir string, dbTx, routes uint64) (*index, error) {
	markPath := filepath.Join(dir, IndexMarkName)
	b, err := os.ReadFile(markPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoMark
	}
	if err != nil {
		return nil, err
	}
	if err := os.Remove(markPath); err != nil {
		return nil, err
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, err
	}
	m, ok := decodeIndexMark(b)
	switch {
	case !ok:
		return nil, errors.New("mark unreadable")
	case m.dbTx != dbTx:
		return nil, fmt.Errorf("mark of transaction %d, the file is at %d", m.dbTx, dbTx)
	case m.used != routes:
		return nil, fmt.Errorf("mark of %d routes, the file holds %d", m.used, routes)
	case m.slots < minSlots || m.slots&(m.slots-1) != 0 || m.used*10 > m.slots*growthLoad:
		return nil, fmt.Errorf("mark of %d slots for %d routes", m.slots, m.used)
	}
	f, err := os.OpenFile(filepath.Join(dir, IndexFileName), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	mem, err := mapExisting(f, int64(m.slots*slotSize))
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &index{dir: dir, mem: mem, file: f, mask: m.slots - 1, used: m.used, seeds: m.seeds}, nil
}

func (ix *index) slot(i uint64) []byte { return ix.mem[i*slotSize : (i+1)*slotSize : (i+1)*slotSize] }

// find returns the slot of h, or the empty slot where it would go.
func (ix *index) find(h ixHash) (i uint64, found bool) { return findIn(ix.mem, ix.mask, h) }

// findIn is find in the table mem of mask+1 slots.
func findIn(mem []byte, mask uint64, h ixHash) (i uint64, found bool) {
	for i = h[1] & mask; ; i = (i + 1) & mask {
		s := mem[i*slotSize : (i+1)*slotSize : (i+1)*slotSize]
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

// apply makes a commit's changes, in order. Commits are serialised: it
// is the only writer of the table.
func (ix *index) apply(cs []ixChange) error {
	sets := uint64(0)
	for i := range cs {
		if !cs[i].del {
			sets++
		}
	}
	if err := ix.reserve(sets); err != nil {
		return err
	}
	ix.mu.Lock()
	for i := range cs {
		if i%touchRun == 0 {
			ix.touched += ix.touchChanges(cs[i:min(i+touchRun, len(cs))])
		}
		if cs[i].del {
			ix.del(cs[i].h)
			continue
		}
		if err := ix.set(cs[i].h, cs[i].pos, cs[i].val); err != nil {
			ix.mu.Unlock()
			return err
		}
	}
	ix.mu.Unlock()
	ix.advanceGrowth(sets)
	return nil
}

// touchRun is how many routes' slots are read ahead at once. The table is
// far larger than the caches, with a TLB miss and a cache miss for nearly
// every look-up; read one after another, each waits for the one before,
// while a run of independent reads waits about once for all of them. In
// a test of 4 M routes: about 220 ns a look-up one by one, 120 in runs
// of 16. touchPrepared and touchChanges read the first word of each
// route's home slot, so that the look-ups that follow find them in the
// cache; the sum they return only keeps the reads from being left out.
const touchRun = 16

// touchPrepared touches the slots of the route events Prefetch read (their
// hash when ready), under the read lock.
func (ix *index) touchPrepared(ps []prepared) (sum uint64) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for i := range ps {
		if ps[i].ready {
			sum += uint64(ix.mem[(ps[i].h[1]&ix.mask)*slotSize])
		}
	}
	return sum
}

// touchChanges touches the slots of a commit's changes; called with the
// write lock held.
func (ix *index) touchChanges(cs []ixChange) (sum uint64) {
	for i := range cs {
		sum += uint64(ix.mem[(cs[i].h[1]&ix.mask)*slotSize])
	}
	return sum
}

// set sets h's position and value, in the table being built too; called
// with the write lock held.
func (ix *index) set(h ixHash, pos uint64, v routeValue) error {
	i, found := ix.find(h)
	if !found {
		if (ix.used+1)*10 > (ix.mask+1)*growthLoad {
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
	if g := ix.next; g != nil && putSlot(g.mem, g.mask, s) {
		g.used++
	}
	return nil
}

// putSlot writes the entry s (a slot's bytes) into the table mem of mask+1
// slots, over the entry of the same hash or into an empty slot; added
// reports the latter.
func putSlot(mem []byte, mask uint64, s []byte) (added bool) {
	i, found := findIn(mem, mask, ixHash{binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])})
	copy(mem[i*slotSize:(i+1)*slotSize], s)
	return !found
}

// del removes h, in the table being built too; called with the write lock
// held. An entry the removal moves from a slot the growth has not copied
// yet to one it has is copied now: the copy would miss it.
func (ix *index) del(h ixHash) {
	g := ix.next
	var moved func(from, to uint64)
	if g != nil {
		moved = func(from, to uint64) {
			if from >= g.cursor && to < g.cursor && putSlot(g.mem, g.mask, ix.slot(to)) {
				g.used++
			}
		}
	}
	if delIn(ix.mem, ix.mask, h, moved) {
		ix.used--
	}
	if g != nil && delIn(g.mem, g.mask, h, nil) {
		g.used--
	}
}

// delIn removes h from the table mem of mask+1 slots, moving back the
// entries after it in its run that could live in its slot (so no
// tombstones: a probe stops at the first empty slot), and tells moved of
// each move after it is made.
func delIn(mem []byte, mask uint64, h ixHash, moved func(from, to uint64)) (removed bool) {
	i, found := findIn(mem, mask, h)
	if !found {
		return false
	}
	slot := func(i uint64) []byte { return mem[i*slotSize : (i+1)*slotSize : (i+1)*slotSize] }
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		s := slot(j)
		if binary.LittleEndian.Uint64(s) == 0 {
			break
		}
		home := binary.LittleEndian.Uint64(s[8:]) & mask
		// The entry at j may move to i when its home is not in (i, j]
		// (cyclically).
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			copy(slot(i), s)
			if moved != nil {
				moved(j, i)
			}
			i = j
		}
	}
	clear(slot(i))
	return true
}

// A growth starts once the table is 60 % full; reserve lets the table
// reach 70 % at most, and finishes a growth at once when a commit would
// pass that. Each apply copies a slice in proportion to the routes it
// sets (an upper bound on those it adds), so that the copy ends by the time half of the room left to 70 %
// is used, and growthMinSlots at least, so that it also ends when commits
// change more routes than they add. (Started at half load, a growth
// doubled tables that would have stayed under 70 %: a 300,000-route run
// paid a 40 MB table it never needed.)
const (
	growthStart    = 6 // tenths
	growthLoad     = 7 // tenths
	growthMinSlots = 16384
)

// advanceGrowth starts a growth once the table is 60 % full, and copies a
// slice of the table for a commit that set sets routes; the last slice
// swaps the tables. Called by the writer without the lock: only the writer
// changes the table, and nobody reads the one being built. A table that
// cannot be made now (a full disk) is tried again at the next commit; the
// current one serves until reserve needs it.
func (ix *index) advanceGrowth(sets uint64) {
	slots := ix.mask + 1
	if ix.next == nil {
		if ix.used*10 <= slots*growthStart {
			return
		}
		mem, f, err := newTable(ix.dir, 2*slots)
		if err != nil {
			ix.growthErrNew = ix.growthErrNew || ix.growthErr == nil
			ix.growthErr = err
			return
		}
		ix.growthErr = nil
		ix.next = &growth{mem: mem, file: f, mask: 2*slots - 1}
		ix.grows.started++
	}
	n := slots // all that is left when there is no room
	if limit := slots * growthLoad / 10; ix.used < limit {
		n = max(growthMinSlots, (slots-ix.next.cursor)*sets*2/(limit-ix.used))
	}
	ix.copySlots(n)
	if ix.next.cursor == slots {
		ix.mu.Lock()
		ix.swapGrowth()
		ix.mu.Unlock()
		ix.grows.ended++
	}
}

// growthFailure returns why a growth could not start, once per run of
// failures; the writer calls it after apply.
func (ix *index) growthFailure() error {
	if !ix.growthErrNew {
		return nil
	}
	ix.growthErrNew = false
	return ix.growthErr
}

// copySlots copies up to n more slots of the table into the growth's.
func (ix *index) copySlots(n uint64) {
	g := ix.next
	end := min(g.cursor+n, ix.mask+1)
	for i := g.cursor; i < end; i++ {
		s := ix.slot(i)
		if binary.LittleEndian.Uint64(s) != 0 && putSlot(g.mem, g.mask, s) {
			g.used++
		}
	}
	g.cursor = end
}

// finishGrowthLocked copies what a growth in progress has left and swaps
// the tables; called with the write lock held.
func (ix *index) finishGrowthLocked() {
	if ix.next == nil {
		return
	}
	ix.copySlots(ix.mask + 1)
	ix.swapGrowth()
	ix.grows.finished++
}

// swapGrowth makes a finished growth's table the current one; called with
// the write lock held.
func (ix *index) swapGrowth() {
	g := ix.next
	ix.next = nil
	if g.used != ix.used {
		// The invariant says this cannot happen. The current table is
		// complete, so the growth is dropped, and its file, which has
		// taken the index's path: a clean close then leaves no index the
		// next open could reuse, and it rebuilds one.
		_ = unmapFile(g.mem)
		_ = g.file.Close()
		_ = os.Remove(filepath.Join(ix.dir, IndexFileName))
		ix.grows.dropped++
		return
	}
	_ = unmapFile(ix.mem)
	_ = ix.file.Close()
	ix.mem, ix.file, ix.mask = g.mem, g.file, g.mask
}

// reserve makes room, before apply takes the write lock, when n more
// routes could fill the table past growthLoad: it finishes a growth in
// progress, or builds a larger table from the current one, which only
// apply changes, while look-ups go on reading the current one under the
// read lock; only the swap takes the write lock. Normally a growth started
// at half load has ended long before.
func (ix *index) reserve(n uint64) error {
	if (ix.used+n)*10 <= (ix.mask+1)*growthLoad {
		return nil
	}
	if ix.next != nil {
		ix.copySlots(ix.mask + 1)
		ix.mu.Lock()
		ix.swapGrowth()
		ix.mu.Unlock()
		ix.grows.finished++
	}
	slots := ix.mask + 1
	for (ix.used+n)*10 > slots*growthLoad {
		slots *= 2
	}
	if slots == ix.mask+1 {
		return nil
	}
	mem, f, err := newTable(ix.dir, slots)
	if err != nil {
		return err
	}
	rehash(mem, slots-1, ix.mem, ix.mask)
	ix.grows.rehashed++
	ix.growthErr, ix.growthErrNew = nil, false
	ix.mu.Lock()
	old, oldFile := ix.mem, ix.file
	ix.mem, ix.file, ix.mask = mem, f, slots-1
	ix.mu.Unlock()
	_ = unmapFile(old)
	_ = oldFile.Close()
	return nil
}

// grow doubles the table, reinserting every entry; called with the write
// lock held, by a set of its own only: apply reserves room for all of its
// changes first (and returns reserve's error before changing anything).
// A growth in progress is finished instead when that makes room.
func (ix *index) grow() error {
	ix.finishGrowthLocked()
	if (ix.used+1)*10 <= (ix.mask+1)*growthLoad {
		return nil
	}
	slots := (ix.mask + 1) * 2
	mem, f, err := newTable(ix.dir, slots)
	if err != nil {
		return err
	}
	rehash(mem, slots-1, ix.mem, ix.mask)
	ix.grows.rehashed++
	ix.growthErr, ix.growthErrNew = nil, false
	_ = unmapFile(ix.mem)
	_ = ix.file.Close()
	ix.mem, ix.file, ix.mask = mem, f, slots-1
	return nil
}

// rehash inserts every entry of the table old into the empty table mem.
func rehash(mem []byte, mask uint64, old []byte, oldMask uint64) {
	for i := uint64(0); i <= oldMask; i++ {
		s := old[i*slotSize : (i+1)*slotSize]
		if binary.LittleEndian.Uint64(s) != 0 {
			putSlot(mem, mask, s)
		}
	}
}
