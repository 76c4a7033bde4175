package rib

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// FileName is the route state's file inside the state directory.
const FileName = "rib.db"

// Layout: routes/<peer key>/<group> → the group's routes (group.go): for
// each, its slot, route value (attribute hash, AFI, SAFI, the peer epoch it
// was last announced in) and route key; counts/<peer key>\x00<table> →
// routes held (uint64); peers/<peer key> → peer meta; meta/applied → the
// highest seq whose changes are in the file; meta/layout → layoutVersion.
// One bucket per peer makes a Peer Down one bucket deletion and its walk
// one cursor.
//
// A route's position is given when the peer first holds it, one more than
// any position the peer held before, and kept until the route is
// withdrawn: so new routes are appended to their peer's bucket (B+tree
// inserts in key order, pages filled and written once) however the router
// orders its table, and a peer's walk visits its routes in the order they
// were first announced. A position's group (8 bytes, big-endian) is the
// position divided by groupSize, its slot the rest. The index (index.go)
// finds a route's position by its key.
var (
	routesBucket = []byte("routes")
	countsBucket = []byte("counts")
	peersBucket  = []byte("peers")
	metaBucket   = []byte("meta")
	appliedKey   = []byte("applied")
	layoutKey    = []byte("layout")
)

// layoutVersion is the layout above; a file of an earlier layout (routes
// keyed by route key, or by position one to an entry) is refused with
// ErrOldLayout.
const layoutVersion = 3

// ErrOldLayout is returned for a state file written by an earlier bgpedge
// that keyed routes differently.
var ErrOldLayout = errors.New("route state file has an older layout: stop the agent and remove it (the state starts empty and fills from the routers' tables)")

// initialMmap is the route state's first mapping of its file: address
// space, not memory (only the pages read are resident, file-backed), so
// on 64-bit systems large enough that the file practically never outgrows
// it (16 GiB: over 100 M routes). Outgrowing it makes a commit remap the
// file, which is correct but waits for every read transaction (a walk's
// chunk, a rib show) to end; on 32-bit systems bbolt maps at most 2 GiB.
const initialMmap = 256<<20 + strconv.IntSize/64*(16<<30-256<<20)

// ErrLocked is returned when another process holds the route state.
var ErrLocked = errors.New("route state is in use by another process (a running agent)")

// routeValue is what the state keeps per route.
type routeValue struct {
	hash  uint64
	afi   uint16
	safi  uint8
	epoch uint32 // the peer's epoch when last announced or confirmed
}

const routeValueLen = 15

// put writes v into b[:routeValueLen].
func (v routeValue) put(b []byte) {
	binary.BigEndian.PutUint64(b, v.hash)
	binary.BigEndian.PutUint16(b[8:], v.afi)
	b[10] = v.safi
	binary.BigEndian.PutUint32(b[11:], v.epoch)
}

// groupKey is a group's key in its peer's bucket.
func groupKey(b *[8]byte, g uint64) []byte {
	binary.BigEndian.PutUint64(b[:], g)
	return b[:]
}

func decodeRoute(b []byte) routeValue {
	if len(b) < routeValueLen {
		return routeValue{}
	}
	return routeValue{hash: binary.BigEndian.Uint64(b), afi: binary.BigEndian.Uint16(b[8:]), safi: b[10], epoch: binary.BigEndian.Uint32(b[11:])}
}

// peerMeta is what the state keeps per peer for staleness: routes announced
// in an epoch before the current one are stale while stale is set.
type peerMeta struct {
	epoch       uint32
	stale       bool
	since       time.Time // when it became stale (the synthetic peer-down's receive time)
	staleRoutes uint64    // committed file only: stale routes it holds
	peerJSON    []byte    // the peer object of its last synthetic peer-down
}

func (m peerMeta) encode() []byte {
	b := binary.BigEndian.AppendUint32(nil, m.epoch)
	st := byte(0)
	if m.stale {
		st = 1
	}
	b = append(b, st)
	b = binary.BigEndian.AppendUint64(b, uint64(m.since.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, m.staleRoutes)
	return append(b, m.peerJSON...)
}

func decodeMeta(b []byte) peerMeta {
	if len(b) < 21 {
		return peerMeta{}
	}
	return peerMeta{epoch: binary.BigEndian.Uint32(b), stale: b[4] == 1, since: time.Unix(0, int64(binary.BigEndian.Uint64(b[5:]))).UTC(),
		staleRoutes: binary.BigEndian.Uint64(b[13:]), peerJSON: append([]byte(nil), b[21:]...)}
}

// store is the committed route state.
type store struct {
	db *bolt.DB
	// scratch is apply's memory, kept from one commit to the next: a
	// commit every ack interval allocated its slabs afresh, about a tenth
	// of what the agent allocates with the route state on.
	scratch applyScratch
}

// applyScratch is what a commit's transaction uses and lets go of once
// written: bbolt reads the values put until then, the index's changes are
// made from res.ix after apply returns and before the next apply (commits
// are serialised).
type applyScratch struct {
	slabs [][]byte // value slabs, free
	ix    []ixChange
	order []int32
}

// maxKeptSlabs bounds the value slabs kept between commits (64 KiB each):
// a commit of new routes fills about one per 1,000 routes.
const maxKeptSlabs = 32

// openStore opens the state file; mmap is its first mapping (0:
// initialMmap), pageSize the page size of a new file (0: the OS's).
func openStore(dir string, readOnly bool, mmap, pageSize int) (*store, error) {
	if mmap == 0 {
		mmap = initialMmap
	}
	path := filepath.Join(dir, FileName)
	if !readOnly {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("rib: %w", err)
		}
	} else if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("rib: %w", err)
	}
	opts := &bolt.Options{Timeout: 2 * time.Second, ReadOnly: readOnly, NoFreelistSync: true,
		InitialMmapSize: mmap, FreelistType: bolt.FreelistMapType, PageSize: pageSize}
	db, err := bolt.Open(path, 0o640, opts)
	if errors.Is(err, syscall.ENOMEM) {
		// Address space limited (ulimit -v): map only the file, as bbolt
		// does by default; commits that grow it then remap more often.
		opts.InitialMmapSize = 0
		db, err = bolt.Open(path, 0o640, opts)
	}
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("rib: open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("rib: open %s: %w", path, err)
	}
	// A file set up already is only read: a write transaction would
	// change its last transaction id, which the index's mark names
	// (index.go).
	ready := false
	err = db.View(func(tx *bolt.Tx) error {
		if err := checkLayout(tx, false); err != nil {
			return err
		}
		ready = tx.Bucket(routesBucket) != nil && tx.Bucket(countsBucket) != nil && tx.Bucket(peersBucket) != nil &&
			tx.Bucket(metaBucket) != nil && tx.Bucket(metaBucket).Get(layoutKey) != nil
		return nil
	})
	if err == nil && !readOnly && !ready {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{routesBucket, countsBucket, peersBucket, metaBucket} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return checkLayout(tx, true)
		})
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("rib: open %s: %w", path, err)
	}
	return &store{db: db}, nil
}

// checkLayout refuses a file of another layout; set marks a file without
// routes as this layout's.
func checkLayout(tx *bolt.Tx, set bool) error {
	meta := tx.Bucket(metaBucket)
	if meta != nil {
		if v := meta.Get(layoutKey); v != nil {
			if len(v) != 8 || binary.BigEndian.Uint64(v) != layoutVersion {
				return ErrOldLayout
			}
			return nil
		}
	}
	if r := tx.Bucket(routesBucket); r != nil {
		if k, _ := r.Cursor().First(); k != nil {
			return ErrOldLayout
		}
	}
	if !set || meta == nil {
		return nil
	}
	return meta.Put(layoutKey, binary.BigEndian.AppendUint64(nil, layoutVersion))
}

func (s *store) close() error { return s.db.Close() }

// applied is the highest seq whose changes the file holds.
func (s *store) applied() (seq uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(metaBucket); b != nil {
			if v := b.Get(appliedKey); len(v) == 8 {
				seq = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	return seq, err
}

// metas reads every peer's meta.
func (s *store) metas() (map[string]peerMeta, error) {
	out := map[string]peerMeta{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(peersBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			out[string(k)] = decodeMeta(v)
			return nil
		})
	})
	return out, err
}

// kv is one stored route.
type kv struct {
	pos uint64
	rk  string
	val routeValue
}

// scan returns about n routes (whole groups, so up to groupSize-1 more)
// of peer at positions from on, in position order; fewer only when the
// peer has no more.
func (s *store) scan(peer string, from uint64, n int) (out []kv, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		r := tx.Bucket(routesBucket)
		if r == nil {
			return nil
		}
		pb := r.Bucket([]byte(peer))
		if pb == nil {
			return nil
		}
		c := pb.Cursor()
		var kb [8]byte
		var es []groupRoute
		for k, v := c.Seek(groupKey(&kb, from/groupSize)); k != nil && len(out) < n; k, v = c.Next() {
			if es, err = decodeGroup(k, v, es[:0]); err != nil {
				return fmt.Errorf("peer %q: %w", peer, err)
			}
			for _, e := range es {
				if pos := groupPos(k, e.slot); pos >= from {
					out = append(out, kv{pos: pos, rk: strings.Clone(e.rk), val: e.val})
				}
			}
		}
		return nil
	})
	return out, err
}

// errCorrupt marks an entry of the state file that no bgpedge writes.
var errCorrupt = errors.New("corrupt route state entry")

// rebuild fills ix with every route of the file and returns each peer's
// next position.
//
// The routes go into the index in runs, as a commit's changes do (apply
// reads their slots ahead), not one by one.
func (s *store) rebuild(ix *index) (next map[string]uint64, err error) {
	next = map[string]uint64{}
	run := make([]ixChange, 0, rebuildRun)
	err = s.db.View(func(tx *bolt.Tx) error {
		r := tx.Bucket(routesBucket)
		return r.ForEachBucket(func(pk []byte) error {
			peer := string(pk)
			c := r.Bucket(pk).Cursor()
			var es []groupRoute
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if es, err = decodeGroup(k, v, es[:0]); err != nil {
					return fmt.Errorf("peer %q: %w", peer, err)
				}
				for _, e := range es {
					run = append(run, ixChange{h: ix.hash(peer, e.rk), pos: groupPos(k, e.slot), val: e.val})
				}
				// Groups come in position order, and a group's routes in slot order.
				next[peer] = groupPos(k, es[len(es)-1].slot) + 1
				if len(run) >= rebuildRun-groupSize {
					if err := ix.apply(run); err != nil {
						return err
					}
					run = run[:0]
				}
			}
			return nil
		})
	})
	if err == nil {
		err = ix.apply(run)
	}
	if err != nil {
		return nil, fmt.Errorf("rib: index: %w", err)
	}
	return next, nil
}

// rebuildRun is how many routes rebuild puts into the index at a time.
const rebuildRun = 4096

// lastTx is the id of the file's last committed transaction.
func (s *store) lastTx() (id uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		id = uint64(tx.ID())
		return nil
	})
	return id, err
}

// nextPositions returns each peer's next position: one after the last it
// holds (what rebuild returns, from each peer's last group alone).
func (s *store) nextPositions() (next map[string]uint64, err error) {
	next = map[string]uint64{}
	err = s.db.View(func(tx *bolt.Tx) error {
		r := tx.Bucket(routesBucket)
		return r.ForEachBucket(func(pk []byte) error {
			k, v := r.Bucket(pk).Cursor().Last()
			if k == nil {
				return nil
			}
			es, err := decodeGroup(k, v, nil)
			if err != nil {
				return fmt.Errorf("peer %q: %w", pk, err)
			}
			next[string(pk)] = groupPos(k, es[len(es)-1].slot) + 1
			return nil
		})
	})
	return next, err
}

// forEachPeer calls fn with every peer that holds routes, in key order.
func (s *store) forEachPeer(fn func(peer string) error) error {
	var peers []string
	err := s.db.View(func(tx *bolt.Tx) error {
		r := tx.Bucket(routesBucket)
		if r == nil {
			return nil
		}
		return r.ForEachBucket(func(k []byte) error {
			peers = append(peers, string(k))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, p := range peers {
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// opKind is what an overlay change does.
type opKind uint8

const (
	opSet   opKind = iota + 1 // hold a route (val)
	opDel                     // forget a route
	opSweep                   // forget the routes of a peer a sweep matches
	opMeta                    // set a peer's meta
)

// sweep selects routes of one peer: those last announced before epoch
// before (0: any epoch), of one table and family ("": any).
type sweep struct {
	before        uint32
	table, family string
}

func (w sweep) matches(rk string, v routeValue) bool {
	if w.before != 0 && v.epoch >= w.before {
		return false
	}
	if w.table == "" && w.family == "" {
		return true
	}
	table, family, _, _, _ := splitRoute(rk)
	return (w.table == "" || w.table == table) && (w.family == "" || w.family == family)
}

// op is one change of the route state, by the record seq that made it.
// The overlay holds tens of thousands: the rare kinds' fields are behind
// pointers, and the small ones packed.
type op struct {
	seq  uint64
	gen  uint64 // overlay generation, to tell the newest change of a key
	peer string
	rk   string
	val  routeValue // opSet
	// opSet, opDel: the route's position in its peer's bucket (a new
	// route's is given when the change is made, Stage.change) and its
	// index hash.
	pos  uint64
	h    ixHash
	sw   *sweep    // opSweep; nil: every route of the peer
	meta *peerMeta // opMeta
	kind opKind
	// opSet, opDel: whether the route was held when the change was decided
	// and its epoch then. The commit applies changes in seq order onto the
	// file every decision read (plus the overlay before it), so this is
	// what the file holds then too, and the commit need not read it.
	held      bool
	heldEpoch uint32
}

// sweep returns an opSweep's sweep.
func (o *op) sweep() sweep {
	if o.sw == nil {
		return sweep{}
	}
	return *o.sw
}

// errPartTooLarge: a commit part changed more pages than it may hold.
var errPartTooLarge = errors.New("commit part changes too many pages")

// applyResult is how a commit changed the totals.
type applyResult struct {
	routes, stale int64
	nodes         int64 // pages the transaction changed (bbolt's nodes)
	// ix is the index's changes, in order, to be made once the
	// transaction is written.
	ix []ixChange
	// cut, when set, is where a sweep stopped: the transaction holds
	// every change before it and the sweep's groups before cut.from.
	cut *sweepCut
}

// sweepCut is a sweep that a commit cut into several transactions: ops[op]
// (of generation gen) has swept its peer's groups before from.
type sweepCut struct {
	op   int
	gen  uint64
	from uint64
}

// apply writes ops (in order) and the applied seq in one transaction.
// Counts and peer metas are kept in memory for the transaction and
// written once at its end: a commit of thousands of new routes of a few
// peers then puts each route once, not also its count and meta.
//
// beforeWrite is called once the changes are made in the transaction's
// memory and before Tx.Commit writes them. Until then nothing can remap
// the file: bbolt allocates pages (and grows the mapping, which waits for
// every read transaction to end) only when Commit spills the changed
// nodes. So read transactions may stay open until beforeWrite, and must
// be closed by it (it is not called when the commit fails before).
//
// With maxNodes > 0 a transaction that materialises more than maxNodes of
// bbolt's nodes is rolled back with errPartTooLarge: the caller commits
// fewer changes instead.
//
// A sweep that walks its peer's groups stops once the transaction holds
// more than sweepNodes nodes (res.cut; the changes after it are not made,
// applied is set to the seq before its record's); resume, when set, is where
// an earlier transaction stopped the sweep of that generation.
func (s *store) apply(ops []op, through uint64, maxNodes, sweepNodes int64, resume *sweepCut, hash func(peer, rk string) ixHash, beforeWrite func()) (res applyResult, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("rib: commit: %w", err)
		}
	}()
	tx, err := s.db.Begin(true)
	if err != nil {
		return applyResult{}, err
	}
	// Only now, under bbolt's writer lock: the scratch is one commit's.
	a := &applier{tx: tx, routes: tx.Bucket(routesBucket), counts: tx.Bucket(countsBucket), peers: tx.Bucket(peersBucket), res: &res,
		byPeer: map[string]*peerTx{}, hash: hash, sweepNodes: sweepNodes, resume: resume, scratch: &s.scratch}
	// The slabs are free again once the transaction is written or rolled
	// back, whichever way apply returns.
	defer a.releaseSlabs()
	if err := applyTx(a, ops, through, maxNodes); err != nil {
		_ = tx.Rollback()
		return applyResult{}, err
	}
	stats := tx.Stats()
	res.nodes = stats.GetNodeCount()
	beforeWrite()
	if err := tx.Commit(); err != nil {
		return applyResult{}, err
	}
	if cap(res.ix) <= maxKeptIxChanges {
		s.scratch.ix = res.ix[:0]
	}
	return res, nil
}

// maxKeptIxChanges bounds the index changes' slice kept between commits
// (48 bytes each): a sweep of a large table is cut into parts, but its
// part may still change more routes than an ordinary commit.
const maxKeptIxChanges = 1 << 16

// applyTx makes a commit's changes in a's transaction.
func applyTx(a *applier, ops []op, through uint64, maxNodes int64) error {
	tx, res := a.tx, a.res
	res.ix = a.scratch.ix[:0]
	if cap(res.ix) < len(ops) {
		res.ix = make([]ixChange, 0, len(ops))
	}
	a.scratch.order = applyOrder(ops, a.scratch.order)
	for n, i := range a.scratch.order {
		if err := a.apply(&ops[i]); err != nil {
			return err
		}
		if res.cut != nil {
			// Sweeps end runs: every op before it is applied, none after.
			res.cut.op = int(i)
			through = ops[i].seq - 1
			break
		}
		if maxNodes > 0 && n%64 == 63 {
			if st := tx.Stats(); st.GetNodeCount() > maxNodes {
				return errPartTooLarge
			}
		}
	}
	if err := a.flushGroup(); err != nil {
		return err
	}
	if err := a.flush(); err != nil {
		return err
	}
	meta := tx.Bucket(metaBucket)
	prev := uint64(0)
	if v := meta.Get(appliedKey); len(v) == 8 {
		prev = binary.BigEndian.Uint64(v)
	}
	if through > prev {
		return meta.Put(appliedKey, binary.BigEndian.AppendUint64(nil, through))
	}
	return nil
}

// applyOrder is the order a commit applies ops in: each run of route sets
// and deletes between sweeps and meta changes sorted by peer and position
// (bbolt then appends new routes and changes the others in key order,
// walking neighbouring pages). Within such a run changes of different
// routes commute (counts and stale counts only add up), and those of one
// route keep their order.
// The order is written into buf's memory when it is large enough.
func applyOrder(ops []op, buf []int32) []int32 {
	order := buf[:0]
	if cap(order) < len(ops) {
		order = make([]int32, len(ops))
	}
	order = order[:len(ops)]
	for i := range order {
		order[i] = int32(i)
	}
	byKey := func(a, b int32) int {
		if c := strings.Compare(ops[a].peer, ops[b].peer); c != 0 {
			return c
		}
		if c := cmp.Compare(ops[a].pos, ops[b].pos); c != 0 {
			return c
		}
		return int(a - b)
	}
	for lo := 0; lo < len(ops); {
		hi := lo
		for hi < len(ops) && (ops[hi].kind == opSet || ops[hi].kind == opDel) {
			hi++
		}
		slices.SortFunc(order[lo:hi], byKey)
		lo = hi + 1
	}
	return order
}

// peerTx is a peer's part of a commit: its routes bucket (nil: none yet or
// deleted), its meta and route counts per table as changed so far.
type peerTx struct {
	b         *bolt.Bucket
	meta      peerMeta
	metaDirty bool
	counts    [5]uint64 // per Tables() index
	countsSet [5]bool   // loaded or changed: written back at flush
}

type applier struct {
	tx                    *bolt.Tx
	sweepNodes            int64
	resume                *sweepCut
	routes, counts, peers *bolt.Bucket
	res                   *applyResult
	byPeer                map[string]*peerTx
	hash                  func(peer, rk string) ixHash
	// vals holds the values put: bbolt keeps a value (not a copy) until
	// the transaction is written. It is a slab of scratch, and so are the
	// full ones before it (used).
	vals    []byte
	used    [][]byte
	scratch *applyScratch
	kb      [8]byte
	grp     groupEdit
	es      []groupRoute // a sweep's
}

// value returns rs as a group entry's value, in a.vals.
func (a *applier) value(rs []groupRoute) []byte {
	n := groupLen(rs)
	if cap(a.vals)-len(a.vals) < n {
		a.vals = a.slab(n)
	}
	b := appendGroup(a.vals[len(a.vals):len(a.vals):len(a.vals)+n], rs)
	a.vals = a.vals[:len(a.vals)+n]
	return b
}

// slab returns an empty value slab of at least n bytes, a kept one if it
// is large enough.
func (a *applier) slab(n int) []byte {
	if a.vals != nil {
		a.used = append(a.used, a.vals)
	}
	free := a.scratch.slabs
	if k := len(free) - 1; k >= 0 && cap(free[k]) >= n {
		b := free[k]
		a.scratch.slabs = free[:k]
		return b[:0]
	}
	return make([]byte, 0, max(slabSize, n))
}

// slabSize is a value slab's usual size.
const slabSize = 64 << 10

// releaseSlabs returns the transaction's slabs to the scratch, once it is
// written or rolled back (bbolt no longer reads them).
func (a *applier) releaseSlabs() {
	if a.vals != nil {
		a.used = append(a.used, a.vals)
	}
	for _, b := range a.used {
		if cap(b) == slabSize && len(a.scratch.slabs) < maxKeptSlabs {
			a.scratch.slabs = append(a.scratch.slabs, b[:0])
		}
	}
	a.vals, a.used = nil, nil
}

// edit makes group g of peer p (whose bucket exists) the group being
// changed, writing back the one before.
func (a *applier) edit(p *peerTx, g uint64) error {
	if e := &a.grp; e.active && e.p == p && e.g == g {
		return nil
	}
	if err := a.flushGroup(); err != nil {
		return err
	}
	e := &a.grp
	e.p, e.g, e.rs, e.dirty, e.active = p, g, e.rs[:0], false, true
	k := groupKey(&a.kb, g)
	if v := p.b.Get(k); v != nil {
		var err error
		if e.rs, err = decodeGroup(k, v, e.rs); err != nil {
			return err
		}
	}
	return nil
}

// flushGroup writes back the group being changed.
func (a *applier) flushGroup() error {
	e := &a.grp
	if !e.active {
		return nil
	}
	e.active = false
	if !e.dirty {
		return nil
	}
	k := groupKey(&a.kb, e.g)
	if len(e.rs) == 0 {
		return e.p.b.Delete(k)
	}
	return e.p.b.Put(k, a.value(e.rs))
}

func tableIndex(table string) int {
	switch table {
	case TableAdjInPre:
		return 0
	case TableAdjInPost:
		return 1
	case TableAdjOutPre:
		return 2
	case TableAdjOutPost:
		return 3
	}
	return 4
}

func (a *applier) peer(peer string) *peerTx {
	if p := a.byPeer[peer]; p != nil {
		return p
	}
	p := &peerTx{b: a.routes.Bucket([]byte(peer)), meta: decodeMeta(a.peers.Get([]byte(peer)))}
	a.byPeer[peer] = p
	return p
}

// count returns the routes held of a peer's table.
func (a *applier) count(peer string, p *peerTx, t int) uint64 {
	if !p.countsSet[t] {
		p.counts[t] = getCount(a.counts, countKey(peer, Tables()[t]))
		p.countsSet[t] = true
	}
	return p.counts[t]
}

func (a *applier) addCount(peer string, p *peerTx, t int, d int64) {
	n := int64(a.count(peer, p, t)) + d
	a.res.routes += d
	p.counts[t] = uint64(max(n, 0))
}

// staleGone records that a route with value v left the file or was
// confirmed.
func (a *applier) staleGone(p *peerTx, v routeValue) {
	m := &p.meta
	if m.stale && v.epoch < m.epoch && m.staleRoutes > 0 {
		m.staleRoutes--
		a.res.stale--
		p.metaDirty = true
	}
}

// sweepsAll reports that sweep w matches every route peer holds: a stale
// timeout's sweep (all tables and families, routes announced before the
// current epoch) of a peer none of whose routes were confirmed since. Such a
// sweep deletes the peer's bucket instead of walking it: a walk that deletes
// makes bbolt materialise every page of the bucket in the transaction (about
// 10 KB a page, 50 MB for a peer of 300,000 routes), the deletion frees the
// pages without reading them.
func (a *applier) sweepsAll(peer string, p *peerTx, w sweep) bool {
	if w.table != "" || w.family != "" || w.before == 0 || !p.meta.stale || w.before != p.meta.epoch {
		return false
	}
	total := uint64(0)
	for t := range Tables() {
		total += a.count(peer, p, t)
	}
	return p.meta.staleRoutes == total
}

// flush writes the counts and metas the transaction changed.
func (a *applier) flush() error {
	for peer, p := range a.byPeer {
		for t, set := range p.countsSet {
			if !set {
				continue
			}
			ck := countKey(peer, Tables()[t])
			var err error
			if p.counts[t] == 0 {
				err = a.counts.Delete(ck)
			} else {
				err = a.counts.Put(ck, binary.BigEndian.AppendUint64(nil, p.counts[t]))
			}
			if err != nil {
				return err
			}
		}
		if p.metaDirty {
			if err := a.peers.Put([]byte(peer), p.meta.encode()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *applier) apply(o *op) error {
	p := a.peer(o.peer)
	if o.kind != opSet && o.kind != opDel {
		// Sweeps and metas read the bucket and the counts as the route
		// changes before them left them.
		if err := a.flushGroup(); err != nil {
			return err
		}
	}
	switch o.kind {
	case opMeta:
		m := *o.meta
		a.res.stale -= int64(p.meta.staleRoutes)
		m.staleRoutes = 0
		if m.stale {
			// Every route the peer holds was announced before this epoch.
			for t := range Tables() {
				m.staleRoutes += a.count(o.peer, p, t)
			}
		}
		a.res.stale += int64(m.staleRoutes)
		p.meta, p.metaDirty = m, true
		return nil
	case opSweep:
		if p.b == nil {
			return nil
		}
		if o.sweep() == (sweep{}) || a.sweepsAll(o.peer, p, o.sweep()) {
			// Reading the routes to take them out of the index
			// materialises no page; deleting the bucket frees them
			// unread.
			c := p.b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				var err error
				if a.es, err = decodeGroup(k, v, a.es[:0]); err != nil {
					return err
				}
				for _, e := range a.es {
					a.res.ix = append(a.res.ix, ixChange{h: a.hash(o.peer, e.rk), del: true})
				}
			}
			for t := range Tables() {
				a.addCount(o.peer, p, t, -int64(a.count(o.peer, p, t)))
			}
			a.res.stale -= int64(p.meta.staleRoutes)
			p.meta.staleRoutes, p.metaDirty = 0, true
			p.b = nil
			return a.routes.DeleteBucket([]byte(o.peer))
		}
		c := p.b.Cursor()
		k, v := c.First()
		if r := a.resume; r != nil && r.gen == o.gen {
			k, v = c.Seek(groupKey(&a.kb, r.from))
		}
		for changed := 0; k != nil; {
			if changed > 0 && a.sweepNodes > 0 {
				if st := a.tx.Stats(); st.GetNodeCount() > a.sweepNodes {
					// Bounded: the rest in the next transaction. Until
					// then the file holds part of the sweep, which a
					// re-delivered record decides the same over: it
					// withdraws what is left of what the sweep
					// matches, and the sink acknowledged the withdraws
					// of the rest before this commit began.
					a.res.cut = &sweepCut{gen: o.gen, from: binary.BigEndian.Uint64(k)}
					p.metaDirty = true
					return nil
				}
			}
			var err error
			if a.es, err = decodeGroup(k, v, a.es[:0]); err != nil {
				return err
			}
			kept := make([]groupRoute, 0, len(a.es))
			for _, e := range a.es {
				if !o.sweep().matches(e.rk, e.val) {
					kept = append(kept, e)
					continue
				}
				a.res.ix = append(a.res.ix, ixChange{h: a.hash(o.peer, e.rk), del: true})
				a.staleGone(p, e.val)
				a.addCount(o.peer, p, tableIndex(tableOf(e.rk)), -1)
			}
			if len(kept) == len(a.es) {
				k, v = c.Next()
				continue
			}
			// A cursor's Next after a change may skip an entry: seek to
			// the changed group's successor instead.
			g := binary.BigEndian.Uint64(k)
			if len(kept) == 0 {
				err = c.Delete()
			} else {
				err = p.b.Put(groupKey(&a.kb, g), a.value(kept))
			}
			if err != nil {
				return err
			}
			changed++
			k, v = c.Seek(groupKey(&a.kb, g+1))
		}
		p.metaDirty = true
		return nil
	case opSet, opDel:
		if p.b == nil {
			if o.kind == opDel {
				return nil
			}
			var err error
			if p.b, err = a.routes.CreateBucket([]byte(o.peer)); err != nil {
				return err
			}
		}
		// New routes are appended: full pages, not bbolt's half-full
		// splits for random inserts.
		p.b.FillPercent = 0.95
		if o.held && p.meta.stale && o.heldEpoch < p.meta.epoch && p.meta.staleRoutes > 0 {
			// A stale route re-announced (confirmed or changed) or withdrawn.
			p.meta.staleRoutes--
			a.res.stale--
			p.metaDirty = true
		}
		t := tableIndex(tableOf(o.rk))
		if o.kind == opDel && !o.held {
			return nil
		}
		if err := a.edit(p, o.pos/groupSize); err != nil {
			return err
		}
		slot := uint8(o.pos % groupSize)
		if o.kind == opSet {
			a.grp.set(slot, o.val, o.rk)
			a.res.ix = append(a.res.ix, ixChange{h: o.h, pos: o.pos, val: o.val})
			if !o.held {
				a.addCount(o.peer, p, t, 1)
			}
			return nil
		}
		a.grp.del(slot)
		a.res.ix = append(a.res.ix, ixChange{h: o.h, del: true})
		a.addCount(o.peer, p, t, -1)
		return nil
	}
	return nil
}

// bytesString is b as a string without a copy, for hashing and reading
// keys; b must not change while the string is used.
func bytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

func countKey(peer, table string) []byte {
	return []byte(peer + "\x00" + table)
}

func getCount(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// totals are the routes held and the stale ones among them.
func (s *store) totals() (routes, stale uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(countsBucket).ForEach(func(_, v []byte) error {
			if len(v) == 8 {
				routes += binary.BigEndian.Uint64(v)
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(peersBucket).ForEach(func(_, v []byte) error {
			stale += decodeMeta(v).staleRoutes
			return nil
		})
	})
	return routes, stale, err
}
