package bmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/bgpedge/bgpedge/record"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// A session that ends while bgpedge runs spools a synthetic peer-down for
// every peer its router left up. When bgpedge itself dies (kill -9, power
// loss) nothing does, and a peer that went down while bgpedge was away would
// stay up for every consumer: the router, reconnecting, only sends Peer Up
// for the peers that are up then. The session journal closes that gap. It
// durably records which peers each session has up, written before the Peer
// Up (or a peer's first Route Monitoring, for a peer without one) reaches
// the spool and cleared only after the Peer Down (or the
// session's synthetic ones) did; the next start marks whatever it still
// holds down.

// sessionJournalFile is the journal's name inside the state directory.
const sessionJournalFile = "bmp-sessions.db"

var journalBucket = []byte("sessions")

// SessionJournal is the durable record of the peers each BMP session has
// up. One process holds it; every listener of that process shares it.
type SessionJournal struct {
	db *bolt.DB
}

// Layout: the sessions bucket holds a bucket per session, with the
// session's router under metaKey and one key per peer that is up (peerKey)
// whose value is the peer's per-peer header, as a synthetic peer-down record
// carries it. A change writes only the peers it adds or removes.
//
// journalEntry is a session's router; the journals of earlier versions kept
// the whole session as one JSON value of this type, Headers included, and
// Recover still reads them.
type journalEntry struct {
	Router  []byte   `json:"router"`
	Source  string   `json:"source"`
	Headers [][]byte `json:"headers,omitempty"`
}

var metaKey = []byte("meta")

// peerKey is a peer's key in its session's bucket: 'p', type, distinguisher,
// whether the address is IPv4 (so an IPv4 peer and its IPv4-mapped IPv6 twin
// stay apart) and the address in 16 bytes.
func peerKey(k PeerKey) []byte {
	b := make([]byte, 0, 27)
	b = append(b, 'p', k.Type)
	b = append(b, k.Distinguisher[:]...)
	v4 := byte(0)
	if k.Address.Is4() {
		v4 = 1
	}
	a := k.Address.As16()
	return append(append(b, v4), a[:]...)
}

// OpenSessionJournal opens (creating) the journal in dir.
func OpenSessionJournal(dir string) (*SessionJournal, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("bmp session journal: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, sessionJournalFile), 0o640, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("bmp session journal: open: %w", err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(journalBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("bmp session journal: %w", err)
	}
	return &SessionJournal{db: db}, nil
}

// Close closes the journal file.
func (j *SessionJournal) Close() error { return j.db.Close() }

// reservedSpool is a spool that takes the records bgpedge makes itself even
// when it is full, within a bounded reserve (buffer.Spool.AppendReserved).
type reservedSpool interface {
	AppendReserved(ctx context.Context, recs ...record.Record) (first uint64, err error)
}

// reservedAppend is spool's AppendReserved, or its Append when it has no
// reserve: for Recover, which runs at start when nothing that frees space
// may run yet, and for the last batches of sessions a stop closes.
func reservedAppend(spool Spool) func(ctx context.Context, recs ...record.Record) (uint64, error) {
	if r, ok := spool.(reservedSpool); ok {
		return r.AppendReserved
	}
	return spool.Append
}

// Recover spools a synthetic peer-down record for every peer that a previous
// run of the process left up, then forgets them. It must run before any
// listener starts. It returns how many peers it marked down.
func (j *SessionJournal) Recover(ctx context.Context, spool Spool, log *slog.Logger) (int, error) {
	var recs []record.Record
	sessions := 0
	now := time.Now()
	err := j.db.View(func(tx *bolt.Tx) error {
		sb := tx.Bucket(journalBucket)
		return sb.ForEach(func(k, v []byte) error {
			var e journalEntry
			if v == nil { // a session bucket
				b := sb.Bucket(k)
				if err := json.Unmarshal(b.Get(metaKey), &e); err != nil {
					log.Warn("bmp session journal: unreadable entry skipped", "session", string(k), "err", err)
					return nil
				}
				_ = b.ForEach(func(pk, h []byte) error {
					if len(pk) > 0 && pk[0] == 'p' {
						e.Headers = append(e.Headers, bytes.Clone(h))
					}
					return nil
				})
			} else if err := json.Unmarshal(v, &e); err != nil {
				log.Warn("bmp session journal: unreadable entry skipped", "session", string(k), "err", err)
				return nil
			}
			sessions++
			for _, h := range e.Headers {
				if len(h) != PerPeerHeaderLen {
					continue
				}
				recs = append(recs, record.Record{Kind: record.KindBMPSyntheticPeerDown, Key: e.Router, Time: now, Source: e.Source, Payload: h})
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("bmp session journal: read: %w", err)
	}
	if len(recs) > 0 {
		if _, err := reservedAppend(spool)(ctx, recs...); err != nil {
			return 0, fmt.Errorf("bmp session journal: spool synthetic peer downs: %w", err)
		}
	}
	if sessions > 0 {
		log.Warn("bmp sessions of a previous run ended without a clean shutdown; their peers are marked down",
			"sessions", sessions, "synthetic_peer_downs", len(recs))
	}
	err = j.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(journalBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucket(journalBucket)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("bmp session journal: clear: %w", err)
	}
	return len(recs), nil
}

// update records, for session id, the peers in up (their headers) and
// forgets those in down, in one transaction.
func (j *SessionJournal) update(id string, e journalEntry, up map[PeerKey][]byte, down []PeerKey) error {
	return j.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(journalBucket).CreateBucketIfNotExists([]byte(id))
		if err != nil {
			return err
		}
		if b.Get(metaKey) == nil {
			v, err := json.Marshal(journalEntry{Router: e.Router, Source: e.Source})
			if err != nil {
				return err
			}
			if err := b.Put(metaKey, v); err != nil {
				return err
			}
		}
		for k, h := range up {
			if err := b.Put(peerKey(k), h); err != nil {
				return err
			}
		}
		for _, k := range down {
			if err := b.Delete(peerKey(k)); err != nil {
				return err
			}
		}
		return nil
	})
}

// forget removes session id: none of its peers is up any more, or their
// synthetic peer-downs are in the spool.
func (j *SessionJournal) forget(id string) error {
	return j.db.Update(func(tx *bolt.Tx) error {
		err := tx.Bucket(journalBucket).DeleteBucket([]byte(id))
		if errors.Is(err, bolterrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
}
