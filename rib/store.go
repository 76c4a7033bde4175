package rib

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FileName is the route state's file inside the state directory.
const FileName = "rib.db"

// Layout: routes/<peer key>/<route key> → value (valueLen bytes: attribute
// hash, AFI, SAFI); counts/<peer key>\x00<table> → routes held (uint64);
// meta/applied → the highest seq whose changes are in the file. One bucket
// per peer makes a Peer Down one bucket deletion, and its walk one cursor.
var (
	routesBucket = []byte("routes")
	countsBucket = []byte("counts")
	metaBucket   = []byte("meta")
	appliedKey   = []byte("applied")
)

const valueLen = 11

// ErrLocked is returned when another process holds the route state.
var ErrLocked = errors.New("route state is in use by another process (a running agent)")

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
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("rib: open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("rib: open %s: %w", path, err)
	}
	if !readOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{routesBucket, countsBucket, metaBucket} {
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
		v = getTx(tx, peer, rk)
		return nil
	})
	return v, err
}

func getTx(tx *bolt.Tx, peer, rk string) []byte {
	r := tx.Bucket(routesBucket)
	if r == nil {
		return nil
	}
	pb := r.Bucket([]byte(peer))
	if pb == nil {
		return nil
	}
	if v := pb.Get([]byte(rk)); v != nil {
		return append([]byte(nil), v...)
	}
	return nil
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

// opKind is what an overlay change does.
type opKind uint8

const (
	opSet   opKind = iota + 1 // hold a route (val)
	opDel                     // forget a route
	opClear                   // forget every route of a peer
)

// op is one change of the route state, by the record seq that made it.
type op struct {
	seq  uint64
	gen  uint64 // overlay generation, to tell the newest change of a key
	kind opKind
	peer string
	rk   string
	val  []byte
}

// apply writes ops (in order) and the applied seq in one transaction and
// returns the change of routes held.
func (s *store) apply(ops []op, through uint64) (delta int64, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		delta = 0
		routes, counts, meta := tx.Bucket(routesBucket), tx.Bucket(countsBucket), tx.Bucket(metaBucket)
		var pb *bolt.Bucket
		var pbName string
		for i := range ops {
			o := &ops[i]
			switch o.kind {
			case opClear:
				pb, pbName = nil, ""
				if routes.Bucket([]byte(o.peer)) == nil {
					continue
				}
				if err := routes.DeleteBucket([]byte(o.peer)); err != nil {
					return err
				}
				for _, t := range Tables() {
					ck := countKey(o.peer, t)
					delta -= int64(getCount(counts, ck))
					if err := counts.Delete(ck); err != nil {
						return err
					}
				}
			case opSet, opDel:
				if pb == nil || pbName != o.peer {
					var err error
					if o.kind == opDel {
						pb = routes.Bucket([]byte(o.peer))
					} else if pb, err = routes.CreateBucketIfNotExists([]byte(o.peer)); err != nil {
						return err
					}
					pbName = o.peer
				}
				if pb == nil {
					continue // deleting from a peer with no routes
				}
				had := pb.Get([]byte(o.rk)) != nil
				table, _, _ := cutTable(o.rk)
				ck := countKey(o.peer, table)
				if o.kind == opSet {
					if err := pb.Put([]byte(o.rk), o.val); err != nil {
						return err
					}
					if !had {
						delta++
						if err := putCount(counts, ck, getCount(counts, ck)+1); err != nil {
							return err
						}
					}
				} else if had {
					if err := pb.Delete([]byte(o.rk)); err != nil {
						return err
					}
					delta--
					if err := putCount(counts, ck, getCount(counts, ck)-1); err != nil {
						return err
					}
				}
			}
		}
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
		return 0, fmt.Errorf("rib: commit: %w", err)
	}
	return delta, nil
}

func cutTable(rk string) (table, rest string, ok bool) {
	for i := 0; i < len(rk); i++ {
		if rk[i] == '|' {
			return rk[:i], rk[i+1:], true
		}
	}
	return rk, "", false
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

func putCount(b *bolt.Bucket, k []byte, n uint64) error {
	if n == 0 {
		return b.Delete(k)
	}
	return b.Put(k, binary.BigEndian.AppendUint64(nil, n))
}

// total is the number of routes held.
func (s *store) total() (n uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(countsBucket).ForEach(func(_, v []byte) error {
			if len(v) == 8 {
				n += binary.BigEndian.Uint64(v)
			}
			return nil
		})
	})
	return n, err
}

func encodeValue(hash uint64, afi uint16, safi uint8) []byte {
	v := make([]byte, valueLen)
	binary.BigEndian.PutUint64(v, hash)
	binary.BigEndian.PutUint16(v[8:], afi)
	v[10] = safi
	return v
}

func decodeValue(v []byte) (hash uint64, afi uint16, safi uint8) {
	if len(v) < valueLen {
		return 0, 0, 0
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint16(v[8:]), v[10]
}

// forEachPeer calls fn with every peer that holds routes, in key order.
func (s *store) forEachPeer(fn func(peer string) error) error {
	var peers []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(routesBucket).ForEachBucket(func(k []byte) error {
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
