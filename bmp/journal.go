package bmp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/bgpedge/bgpedge/record"
	bolt "go.etcd.io/bbolt"
)

// A session that ends while bgpedge runs spools a synthetic peer-down for
// every peer its router left up. When bgpedge itself dies (kill -9, power
// loss) nothing does, and a peer that went down while bgpedge was away would
// stay up for every consumer: the router, reconnecting, only sends Peer Up
// for the peers that are up then. The session journal closes that gap. It
// durably records which peers each session has up, written before the Peer
// Up reaches the spool and cleared only after the Peer Down (or the
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

// journalEntry is one session's peers: their per-peer headers, as a
// synthetic peer-down record carries them.
type journalEntry struct {
	Router  []byte   `json:"router"`
	Source  string   `json:"source"`
	Headers [][]byte `json:"headers"`
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

// Recover spools a synthetic peer-down record for every peer that a previous
// run of the process left up, then forgets them. It must run before any
// listener starts. It returns how many peers it marked down.
func (j *SessionJournal) Recover(ctx context.Context, spool Spool, log *slog.Logger) (int, error) {
	var recs []record.Record
	sessions := 0
	now := time.Now()
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(journalBucket).ForEach(func(k, v []byte) error {
			var e journalEntry
			if err := json.Unmarshal(v, &e); err != nil {
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
		if _, err := spool.Append(ctx, recs...); err != nil {
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

// set records the peers session id has up (replacing what it held).
func (j *SessionJournal) set(id string, e journalEntry) error {
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(journalBucket).Put([]byte(id), v) })
}

// forget removes session id: none of its peers is up any more, or their
// synthetic peer-downs are in the spool.
func (j *SessionJournal) forget(id string) error {
	return j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(journalBucket).Delete([]byte(id)) })
}
