package buffer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/bgpedge/bgpedge/internal/atomicfile"
)

const (
	segPrefix        = "seg-"
	segSuffix        = ".db"
	quarantineSuffix = ".quarantined"
	tmpSuffix        = ".tmp"
)

// Bucket and key names; functions because bbolt wants []byte and package
// state must not be mutable.
func bucketBlocks() []byte { return []byte("blocks") }
func bucketMeta() []byte   { return []byte("meta") }
func keyAcked() []byte     { return []byte("acked") }
func keyData() []byte      { return []byte{0} }

// Each block lives in its own nested bucket blocks/<first seq>, as the only
// value (key 0). bbolt rewrites a whole leaf, values included, whenever a key
// is added to it, and never splits a leaf of four keys or fewer: with blocks
// stored inline every commit would rewrite the last three blocks again (a
// measured 3-4x write amplification). A nested bucket's pages are written
// once; only the small parent leaf of bucket headers is rewritten.
func putBlock(b *bolt.Bucket, first uint64, value []byte) error {
	sub, err := b.CreateBucket(seqKey(first))
	if err != nil {
		return err
	}
	return sub.Put(keyData(), value)
}

// reclaimBatch bounds the blocks one commit deletes, so a commit after a long
// outage's backlog is acknowledged stays short; the rest go in later commits.
const reclaimBatch = 1024

// reclaim deletes the oldest blocks of the active segment whose records are
// all at or below acked, the watermark this same transaction leaves in the
// segment. bbolt reuses their pages in later commits: writes then go to
// blocks the file already has, so the file stops growing while acks keep up
// with appends, and a commit's fdatasync carries no block allocation (no
// journal commit). next is the first seq of the block the transaction adds,
// so the newest block, which tells where the segment ends, always remains.
// Only pages freed by a synced commit are reused (bbolt frees pages of a
// transaction to the one after it), so rolling back a torn last commit still
// finds the previous commit intact.
func reclaim(b *bolt.Bucket, next, acked uint64) error {
	var dead [][]byte
	c := b.Cursor()
	k, _ := c.First()
	for k != nil && len(dead) < reclaimBatch {
		nk, _ := c.Next()
		end := next
		if nk != nil {
			end = binary.BigEndian.Uint64(nk)
		}
		if end-1 > acked {
			break
		}
		dead = append(dead, bytes.Clone(k))
		k = nk
	}
	for _, k := range dead {
		if err := b.DeleteBucket(k); err != nil {
			return fmt.Errorf("reclaim block %x: %w", k, err)
		}
	}
	return nil
}

// blockValue returns the block stored under key k (valid inside the tx).
func blockValue(b *bolt.Bucket, k []byte) ([]byte, error) {
	sub := b.Bucket(k)
	if sub == nil {
		return nil, fmt.Errorf("block %x is not a bucket: %w", k, ErrCorrupt)
	}
	v := sub.Get(keyData())
	if v == nil {
		return nil, fmt.Errorf("block %x has no data: %w", k, ErrCorrupt)
	}
	return v, nil
}

// segment is one bbolt file holding the consecutive seqs [first, end).
// first is also in the file name, so an empty segment still records the
// next seq to hand out after a restart.
type segment struct {
	first     uint64
	end       uint64
	path      string
	db        *bolt.DB
	size      int64     // bytes on disk
	lastWrite time.Time // last commit, for max_age
}

func segmentName(first uint64) string {
	return fmt.Sprintf("%s%020d%s", segPrefix, first, segSuffix)
}

type segFile struct {
	first uint64
	path  string
}

// listSegments returns the segment files in dir in seq order.
func listSegments(dir string) ([]segFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list spool dir: %w", err)
	}
	var out []segFile
	for _, e := range ents {
		n := e.Name()
		if !strings.HasSuffix(n, segSuffix) || !e.Type().IsRegular() {
			continue
		}
		first, rest, ok := segmentFirst(n)
		if !ok || rest != "" {
			continue
		}
		out = append(out, segFile{first: first, path: filepath.Join(dir, n)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].first < out[j].first })
	return out, nil
}

// quarantinedFloor is past every seq the segments set aside in dir (by
// this or an earlier run) could hold, where they start at or after end, the
// end of the good segments (one that starts before lies below a good
// segment). Their seqs must never be handed out again, even by a spool
// whose every segment was set aside.
func quarantinedFloor(dir string, end uint64) uint64 {
	files, _ := Quarantined(dir)
	floor := end
	for _, f := range files {
		first, _, ok := segmentFirst(filepath.Base(f))
		if !ok || first < end {
			continue
		}
		if st, err := os.Stat(f); err == nil {
			floor = max(floor, first+uint64(st.Size()))
		}
	}
	return floor
}

// segmentFirst reads the first seq from a segment file name, and returns
// what follows ".db" (a segment set aside is seg-<first>.db[.<time>].quarantined).
func segmentFirst(name string) (first uint64, rest string, ok bool) {
	name, ok = strings.CutPrefix(name, segPrefix)
	if !ok {
		return 0, "", false
	}
	digits, rest, ok := strings.Cut(name, segSuffix)
	if !ok {
		return 0, "", false
	}
	first, err := strconv.ParseUint(digits, 10, 64)
	return first, rest, err == nil && first != 0
}

func boltOptions(readOnly bool) *bolt.Options {
	return &bolt.Options{
		// The directory lock already excludes other processes; this only
		// turns an unexpected second opener into an error instead of a hang.
		Timeout:        time.Second,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
		// Without the truncate-and-fsync on growth the file grows by its own
		// writes; fdatasync on commit persists the new size, and the file
		// size stays the true on-disk footprint.
		NoGrowSync: true,
		// bbolt's own commit syncs twice (data pages, then the meta page).
		// The spool syncs once after the commit instead, which halves the
		// fsyncs per commit; the state a power cut can then leave (the new
		// meta page on disk, some of its pages not) is detected by the block
		// CRCs at open and undone by rollbackLastCommit.
		NoSync:   true,
		ReadOnly: readOnly,
	}
}

// segmentInfo is what verification learns about a segment file.
type segmentInfo struct {
	end   uint64
	acked uint64
}

// openSegment opens and fully verifies a segment: every block key is in
// sequence and every chunk's CRC matches. Verifying everything costs one read
// of the backlog at start-up; in exchange a segment is either fully readable
// or quarantined, and a crash can never leave a half-readable segment behind.
func openSegment(sf segFile, readOnly bool) (*segment, segmentInfo, error) {
	db, err := safeOpen(sf.path, readOnly)
	if err != nil {
		return nil, segmentInfo{}, fmt.Errorf("open segment %s: %w", filepath.Base(sf.path), err)
	}
	info, err := verifySegment(db, sf.first)
	if err != nil {
		_ = db.Close()
		return nil, segmentInfo{}, fmt.Errorf("verify segment %s: %w", filepath.Base(sf.path), err)
	}
	st, err := os.Stat(sf.path)
	if err != nil {
		_ = db.Close()
		return nil, segmentInfo{}, fmt.Errorf("stat segment: %w", err)
	}
	return &segment{first: sf.first, end: info.end, path: sf.path, db: db, size: st.Size(), lastWrite: st.ModTime()}, info, nil
}

func verifySegment(db *bolt.DB, first uint64) (segmentInfo, error) {
	info := segmentInfo{end: first}
	err := safeView(db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlocks())
		m := tx.Bucket(bucketMeta())
		if b == nil || m == nil {
			return fmt.Errorf("missing buckets: %w", ErrCorrupt)
		}
		if v := m.Get(keyAcked()); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("bad acked watermark: %w", ErrCorrupt)
			}
			info.acked = binary.BigEndian.Uint64(v)
		}
		c := b.Cursor()
		k, _ := c.First()
		if len(k) == 8 {
			// Acknowledged blocks reclaimed from the front leave a gap that
			// the watermark must cover.
			if k0 := binary.BigEndian.Uint64(k); k0 > first && k0-1 <= info.acked {
				info.end = k0
			}
		}
		for ; k != nil; k, _ = c.Next() {
			if len(k) != 8 {
				return fmt.Errorf("bad block key %x: %w", k, ErrCorrupt)
			}
			if seq := binary.BigEndian.Uint64(k); seq != info.end {
				return fmt.Errorf("block key %d, want %d: %w", seq, info.end, ErrCorrupt)
			}
			v, err := blockValue(b, k)
			if err != nil {
				return err
			}
			n, err := verifyBlock(v)
			if err != nil {
				return fmt.Errorf("block %d: %w", info.end, err)
			}
			info.end += uint64(n)
		}
		return nil
	})
	return info, err
}

// errPanic marks a panic inside bbolt, which is how it reports many kinds of
// page corruption.
var errPanic = errors.New("bbolt panicked reading the file")

// safeView runs fn in a read transaction, turning panics and memory faults
// (bbolt reads through mmap) into errors.
func safeView(db *bolt.DB, fn func(*bolt.Tx) error) (err error) {
	prev := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(prev)
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v: %w", errPanic, r, ErrCorrupt)
		}
	}()
	return db.View(fn)
}

// safeOpen opens a bbolt file, turning panics and memory faults into errors:
// without a synced free list bbolt walks every page while opening.
func safeOpen(path string, readOnly bool) (db *bolt.DB, err error) {
	prev := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(prev)
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("%w: %v: %w", errPanic, r, ErrCorrupt)
		}
	}()
	return bolt.Open(path, 0o640, boltOptions(readOnly))
}

// createSegment makes a new empty segment starting at first. It is built
// under a temporary name and renamed into place, so a crash never leaves a
// half-initialised segment behind; the directory is synced so the file
// survives power loss.
func createSegment(dir string, first, acked uint64) (*segment, error) {
	path := filepath.Join(dir, segmentName(first))
	tmp := path + tmpSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale segment: %w", err)
	}
	db, err := bolt.Open(tmp, 0o640, boltOptions(false))
	if err != nil {
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("create segment: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketBlocks()); err != nil {
			return err
		}
		m, err := tx.CreateBucketIfNotExists(bucketMeta())
		if err != nil {
			return err
		}
		return m.Put(keyAcked(), binary.BigEndian.AppendUint64(nil, acked))
	})
	if err == nil {
		err = db.Sync()
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = atomicfile.SyncDir(dir)
	}
	if err == nil {
		// Reopened under its final name, which bbolt puts in its errors.
		db, err = bolt.Open(path, 0o640, boltOptions(false))
	}
	if err != nil {
		_ = os.Remove(tmp)
		_ = os.Remove(path)
		return nil, fmt.Errorf("create segment: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("stat segment: %w", err)
	}
	return &segment{first: first, end: first, path: path, db: db, size: st.Size(), lastWrite: time.Now()}, nil
}

// removeTemps deletes segments whose creation was interrupted.
func removeTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list spool dir: %w", err)
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, segPrefix) && strings.HasSuffix(n, tmpSuffix) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("remove interrupted segment: %w", err)
			}
		}
	}
	return nil
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq) }

// bbolt meta page layout (bbolt writes the struct in native byte order): a 16-byte
// page header, then magic u32, version u32, page size u32, flags u32, root
// bucket (16 bytes), freelist u64, high-water page u64, txid u64, checksum u64.
const (
	metaMagic     = 0xED0CDAED
	metaOffMagic  = 16
	metaOffPgSize = 24
	metaOffTxid   = 64
	metaLen       = 64 // magic .. checksum
)

// rollbackLastCommit handles the one state a power cut can leave behind with
// a single fdatasync per commit: the newest meta page on disk while some pages
// of that commit are not. Only the last commit can be affected (every earlier
// one was synced before the next began), and it was never acknowledged to an
// appender (Append returns after the sync). A copy of the file with the newest
// meta page invalidated makes bbolt open the previous commit; the copy
// replaces the file only if it verifies completely.
func rollbackLastCommit(sf segFile) error {
	b, err := rolledBackImage(sf.path)
	if err != nil {
		return err
	}
	tmp := sf.path + ".rollback" + tmpSuffix
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("rollback: %w", err)
	}
	db, err := safeOpen(tmp, false)
	if err == nil {
		_, err = verifySegment(db, sf.first)
		if err == nil {
			err = db.Sync()
		}
		if cerr := db.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, sf.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("rollback: previous commit does not verify either: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(sf.path))
}

// openRolledBack is rollbackLastCommit for a read-only spool: it opens the
// segment as of its previous commit from a copy outside the spool, and
// leaves the file itself as it is for `bgpedge run` to roll back. The copy
// is unlinked at once; the open file keeps it readable until it is closed.
func openRolledBack(sf segFile) (*segment, segmentInfo, error) {
	b, err := rolledBackImage(sf.path)
	if err != nil {
		return nil, segmentInfo{}, err
	}
	f, err := os.CreateTemp("", "bgpedge-rollback-*"+segSuffix)
	if err != nil {
		return nil, segmentInfo{}, fmt.Errorf("rollback copy: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, segmentInfo{}, fmt.Errorf("rollback copy: %w", err)
	}
	seg, info, err := openSegment(segFile{first: sf.first, path: tmp}, true)
	if err != nil {
		return nil, segmentInfo{}, fmt.Errorf("rollback: previous commit does not verify either: %w", err)
	}
	st, err := os.Stat(sf.path)
	if err != nil {
		_ = seg.db.Close()
		return nil, segmentInfo{}, fmt.Errorf("stat segment: %w", err)
	}
	seg.path, seg.size, seg.lastWrite = sf.path, st.Size(), st.ModTime()
	return seg, info, nil
}

// rolledBackImage is the segment file's content with its newest meta page
// cleared, so that bbolt opens it as of the commit before.
func rolledBackImage(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	ne := binary.NativeEndian
	pageSize := os.Getpagesize()
	if len(b) >= metaOffPgSize+4 && ne.Uint32(b[metaOffMagic:]) == metaMagic {
		pageSize = int(ne.Uint32(b[metaOffPgSize:]))
	}
	if pageSize < 1024 || pageSize > 1<<16 || len(b) < 2*pageSize {
		return nil, fmt.Errorf("rollback: no usable meta pages: %w", ErrCorrupt)
	}
	newest, txid := -1, uint64(0)
	for i := 0; i < 2; i++ {
		m := b[i*pageSize:]
		if ne.Uint32(m[metaOffMagic:]) != metaMagic {
			continue
		}
		if t := ne.Uint64(m[metaOffTxid:]); newest < 0 || t > txid {
			newest, txid = i, t
		}
	}
	if newest < 0 {
		return nil, fmt.Errorf("rollback: no meta page: %w", ErrCorrupt)
	}
	clear(b[newest*pageSize+metaOffMagic : newest*pageSize+metaOffMagic+metaLen])
	return b, nil
}
