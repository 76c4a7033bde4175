package rib

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// FileName is the route state's file inside the state directory.
const FileName = "rib.db"

// Layout: routes/<peer key>/<route key> → route value (attribute hash, AFI,
// SAFI, the peer epoch it was last announced in); counts/<peer key>\x00<table>
// → routes held (uint64); peers/<peer key> → peer meta; meta/applied → the
// highest seq whose changes are in the file. One bucket per peer makes a
// Peer Down one bucket deletion and its walk one cursor.
var (
	routesBucket = []byte("routes")
	countsBucket = []byte("counts")
	peersBucket  = []byte("peers")
	metaBucket   = []byte("meta")
	appliedKey   = []byte("applied")
)

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

func (v routeValue) encode() []byte {
	b := make([]byte, routeValueLen)
	binary.BigEndian.PutUint64(b, v.hash)
	binary.BigEndian.PutUint16(b[8:], v.afi)
	b[10] = v.safi
	binary.BigEndian.PutUint32(b[11:], v.epoch)
	return b
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
}

func openStore(dir string, readOnly bool) (*store, error) {
	path := filepath.Join(dir, FileName)
	if !readOnly {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("rib: %w", err)
		}
	} else if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("rib: %w", err)
	}
	db, err := bolt.Open(path, 0o640, &bolt.Options{Timeout: 2 * time.Second, ReadOnly: readOnly, NoFreelistSync: true})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("rib: open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("rib: open %s: %w", path, err)
	}
	if !readOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{routesBucket, countsBucket, peersBucket, metaBucket} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("rib: init %s: %w", path, err)
		}
	}
	return &store{db: db}, nil
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

// get reads a route's value; nil when the state does not hold it.
func (s *store) get(peer, rk string) (v []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		r := tx.Bucket(routesBucket)
		if r == nil {
			return nil
		}
		if pb := r.Bucket([]byte(peer)); pb != nil {
			if x := pb.Get([]byte(rk)); x != nil {
				v = append([]byte(nil), x...)
			}
		}
		return nil
	})
	return v, err
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
	rk  string
	val []byte
}

// scan returns up to n routes of peer with keys after the route key after
// ("" for the first), in key order.
func (s *store) scan(peer, after string, n int) (out []kv, err error) {
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
		var k, v []byte
		if after == "" {
			k, v = c.First()
		} else {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil && len(out) < n; k, v = c.Next() {
			out = append(out, kv{rk: string(k), val: append([]byte(nil), v...)})
		}
		return nil
	})
	return out, err
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

func (w sweep) matches(rk string, v []byte) bool {
	if w.before != 0 && decodeRoute(v).epoch >= w.before {
		return false
	}
	if w.table == "" && w.family == "" {
		return true
	}
	table, family, _, _, _ := splitRoute(rk)
	return (w.table == "" || w.table == table) && (w.family == "" || w.family == family)
}

// op is one change of the route state, by the record seq that made it.
type op struct {
	seq  uint64
	gen  uint64 // overlay generation, to tell the newest change of a key
	kind opKind
	peer string
	rk   string
	val  []byte
	sw   sweep
	meta peerMeta
}

// applyResult is how a commit changed the totals.
type applyResult struct {
	routes, stale int64
}

// apply writes ops (in order) and the applied seq in one transaction.
func (s *store) apply(ops []op, through uint64) (res applyResult, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		res = applyResult{}
		a := applier{routes: tx.Bucket(routesBucket), counts: tx.Bucket(countsBucket), peers: tx.Bucket(peersBucket), res: &res}
		for i := range ops {
			if err := a.apply(&ops[i]); err != nil {
				return err
			}
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
	})
	if err != nil {
		return applyResult{}, fmt.Errorf("rib: commit: %w", err)
	}
	return res, nil
}

type applier struct {
	routes, counts, peers *bolt.Bucket
	res                   *applyResult
}

func (a applier) meta(peer string) peerMeta { return decodeMeta(a.peers.Get([]byte(peer))) }

// staleGone records that a route of peer with value v left the file or
// was confirmed.
func (a applier) staleGone(peer string, m *peerMeta, v []byte) {
	if m.stale && v != nil && decodeRoute(v).epoch < m.epoch && m.staleRoutes > 0 {
		m.staleRoutes--
		a.res.stale--
	}
}

func (a applier) count(peer, table string, d int64) error {
	ck := countKey(peer, table)
	n := int64(getCount(a.counts, ck)) + d
	a.res.routes += d
	if n <= 0 {
		return a.counts.Delete(ck)
	}
	return a.counts.Put(ck, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

func (a applier) apply(o *op) error {
	switch o.kind {
	case opMeta:
		m := o.meta
		old := a.meta(o.peer)
		a.res.stale -= int64(old.staleRoutes)
		m.staleRoutes = 0
		if m.stale {
			// Every route the peer holds was announced before this epoch.
			for _, t := range Tables() {
				m.staleRoutes += getCount(a.counts, countKey(o.peer, t))
			}
		}
		a.res.stale += int64(m.staleRoutes)
		return a.peers.Put([]byte(o.peer), m.encode())
	case opSweep:
		pb := a.routes.Bucket([]byte(o.peer))
		if pb == nil {
			return nil
		}
		m := a.meta(o.peer)
		if o.sw == (sweep{}) {
			for _, t := range Tables() {
				if err := a.count(o.peer, t, -int64(getCount(a.counts, countKey(o.peer, t)))); err != nil {
					return err
				}
			}
			a.res.stale -= int64(m.staleRoutes)
			m.staleRoutes = 0
			if err := a.peers.Put([]byte(o.peer), m.encode()); err != nil {
				return err
			}
			return a.routes.DeleteBucket([]byte(o.peer))
		}
		c := pb.Cursor()
		for k, v := c.First(); k != nil; {
			if !o.sw.matches(string(k), v) {
				k, v = c.Next()
				continue
			}
			a.staleGone(o.peer, &m, v)
			if err := a.count(o.peer, tableOf(string(k)), -1); err != nil {
				return err
			}
			// A cursor's Next after Delete may skip an item: seek to the
			// deleted key's successor instead (a copy: k is the page's).
			deleted := append([]byte(nil), k...)
			if err := c.Delete(); err != nil {
				return err
			}
			k, v = c.Seek(deleted)
		}
		return a.peers.Put([]byte(o.peer), m.encode())
	case opSet, opDel:
		pb := a.routes.Bucket([]byte(o.peer))
		if pb == nil {
			if o.kind == opDel {
				return nil
			}
			var err error
			if pb, err = a.routes.CreateBucket([]byte(o.peer)); err != nil {
				return err
			}
		}
		old := pb.Get([]byte(o.rk))
		if old != nil {
			old = append([]byte(nil), old...)
		}
		m := a.meta(o.peer)
		stale0 := m.staleRoutes
		a.staleGone(o.peer, &m, old)
		if m.staleRoutes != stale0 {
			if err := a.peers.Put([]byte(o.peer), m.encode()); err != nil {
				return err
			}
		}
		if o.kind == opSet {
			if err := pb.Put([]byte(o.rk), o.val); err != nil {
				return err
			}
			if old == nil {
				return a.count(o.peer, tableOf(o.rk), 1)
			}
			return nil
		}
		if old == nil {
			return nil
		}
		if err := pb.Delete([]byte(o.rk)); err != nil {
			return err
		}
		return a.count(o.peer, tableOf(o.rk), -1)
	}
	return nil
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
