package exabgp

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/bgpedge/bgpedge/internal/atomicfile"
)

// JournalEntry is one injected route or flow that should be announced.
type JournalEntry struct {
	Key       string    `json:"key"`
	Verb      string    `json:"verb"`
	Neighbors []string  `json:"neighbors,omitempty"`
	Body      string    `json:"command"` // without the neighbor selector
	RequestID string    `json:"request_id,omitempty"`
	Added     time.Time `json:"added"`
	// Request is the accepted request, checked again against the policy in
	// force before each replay.
	Request *Request `json:"request,omitempty"`
	// Pending is set from the moment the command is written to exaBGP until
	// exaBGP acks it done. A command that timed out stays pending: exaBGP may
	// still apply it, so it keeps counting against max_routes, is listed and
	// is replayed (a replay acked done confirms it).
	Pending bool `json:"pending,omitempty"`
}

// same reports whether e and o are the same version of an entry: the one a
// command wrote, not a later command's for the same key.
func (e JournalEntry) same(o JournalEntry) bool {
	return e.Key == o.Key && e.Body == o.Body && e.RequestID == o.RequestID && e.Added.Equal(o.Added) && e.Pending == o.Pending
}

// Line is the exaBGP command that announces the entry to its neighbors.
func (e JournalEntry) Line() string { return withSelector(e.Neighbors, e.Body) }

// Journal is the durable desired state: the routes and flows central asked
// for. It is small (bounded by policy.max_routes) and rewritten whole on each
// change, atomically (temporary file, fsync, rename, directory fsync), so a
// crash leaves either the old or the new state, never a torn file.
type Journal struct {
	path string
	mu   sync.Mutex
	ents map[string]JournalEntry
}

type journalFile struct {
	Version int            `json:"version"`
	Entries []JournalEntry `json:"entries"`
}

// ErrJournalCorrupt marks a journal file that exists but does not decode.
var ErrJournalCorrupt = errors.New("journal does not decode")

// OpenJournal loads the journal at path (a missing file is an empty journal).
func OpenJournal(path string) (*Journal, error) {
	j := &Journal{path: path, ents: map[string]JournalEntry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	var f journalFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrJournalCorrupt, path, err)
	}
	for _, e := range f.Entries {
		j.ents[e.Key] = e
	}
	return j, nil
}

// Len is the number of entries.
func (j *Journal) Len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.ents)
}

// Has reports whether key is journaled.
func (j *Journal) Has(key string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, ok := j.ents[key]
	return ok
}

// Get returns the entry for key.
func (j *Journal) Get(key string) (JournalEntry, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	e, ok := j.ents[key]
	return e, ok
}

// Pending is the number of entries not yet acked by exaBGP.
func (j *Journal) Pending() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, e := range j.ents {
		if e.Pending {
			n++
		}
	}
	return n
}

// Entries returns the entries sorted by key.
func (j *Journal) Entries() []JournalEntry {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.sortedLocked()
}

func (j *Journal) sortedLocked() []JournalEntry {
	out := make([]JournalEntry, 0, len(j.ents))
	for _, e := range j.ents {
		out = append(out, e)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Key < out[b].Key })
	return out
}

// Put adds or replaces an entry and persists the journal.
func (j *Journal) Put(e JournalEntry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	old, had := j.ents[e.Key]
	j.ents[e.Key] = e
	if err := j.saveLocked(); err != nil {
		if had {
			j.ents[e.Key] = old
		} else {
			delete(j.ents, e.Key)
		}
		return err
	}
	return nil
}

// Delete removes an entry, if present, and persists the journal.
func (j *Journal) Delete(key string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	old, had := j.ents[key]
	if !had {
		return nil
	}
	delete(j.ents, key)
	if err := j.saveLocked(); err != nil {
		j.ents[key] = old
		return err
	}
	return nil
}

// Resolve replaces the entry cur (or removes it when next is nil) and
// persists the journal, but only if cur is still what the journal holds for
// its key: an ack that arrives late must not overwrite a later command's
// entry. It reports whether it changed anything.
func (j *Journal) Resolve(cur JournalEntry, next *JournalEntry) (bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	have, ok := j.ents[cur.Key]
	if !ok || !have.same(cur) {
		return false, nil
	}
	if next != nil {
		j.ents[cur.Key] = *next
	} else {
		delete(j.ents, cur.Key)
	}
	if err := j.saveLocked(); err != nil {
		j.ents[cur.Key] = have
		return false, err
	}
	return true, nil
}

func (j *Journal) saveLocked() error {
	b, err := json.MarshalIndent(journalFile{Version: 1, Entries: j.sortedLocked()}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode journal: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(j.path), 0o750); err != nil {
		return fmt.Errorf("journal dir: %w", err)
	}
	if err := atomicfile.Write(j.path, b); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}
