package buffer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/bgpedge/bgpedge/internal/atomicfile"
	"github.com/bgpedge/bgpedge/internal/lograte"
	"github.com/bgpedge/bgpedge/record"
)

// Sentinel errors.
var (
	// ErrClosed is returned by Append and Read once Close has been called.
	ErrClosed = errors.New("spool closed")
	// ErrFull wraps commit failures caused by a full disk (ENOSPC, EDQUOT) or
	// a file size limit (EFBIG). Nothing was written; callers back off and retry.
	ErrFull = errors.New("spool disk full")
	// ErrInUse means another process holds the spool directory.
	ErrInUse = errors.New("spool in use by another process")
	// ErrReadOnly is returned by Append and Ack on a spool opened read-only.
	ErrReadOnly = errors.New("spool opened read-only")
	// ErrTooLarge is returned when one Append call exceeds 1 GiB encoded.
	ErrTooLarge = errors.New("records too large for one append")
	// ErrUnknownSeq is returned when acknowledging a seq not yet appended.
	ErrUnknownSeq = errors.New("seq not yet appended")
)

type appendReq struct {
	chunk []byte
	n     int
	done  chan appendResult
}

type appendResult struct {
	first uint64
	err   error
}

// seqRange is an inclusive range of seqs.
type seqRange struct{ lo, hi uint64 }

// Spool is the durable, segmented write-ahead buffer. All methods are safe
// for concurrent use.
type Spool struct {
	opts     Options
	log      *slog.Logger
	m        *metrics
	lockFile *os.File

	reqs       chan *appendReq // unbuffered: a send succeeds only if the writer takes it
	kick       chan struct{}
	stop       chan struct{}
	writerDone chan struct{}
	inflight   atomic.Int64 // appenders past the capacity check that have not returned yet
	reqPool    sync.Pool
	closeOnce  sync.Once
	closeErr   error

	// Owned by the writer goroutine.
	wbuf      []byte
	persisted uint64 // acked watermark known to be durable
	failing   bool   // last commit failed; log the recovery once
	timer     *time.Timer
	ackLog    lograte.Limiter
	stopErr   error // the final watermark persist; read by Close after writerDone
	// syncFailed is set by a failed fdatasync; the next commit starts a new
	// segment.
	syncFailed bool

	mu      sync.Mutex
	segs    []*segment // in seq order; the last one is the active segment
	next    uint64     // next seq to hand out
	acked   uint64     // every seq ≤ acked is acknowledged (or gone)
	pending []seqRange // acknowledged ranges above acked+1, sorted, disjoint
	bad     []seqRange // unreadable blocks found by Read, skipped
	bytes   int64
	closed  bool
	dataCh  chan struct{} // closed and replaced after each commit
	spaceCh chan struct{} // closed and replaced when bytes shrink

	cacheMu sync.Mutex
	cache   blockCache

	oldestMu sync.Mutex
	oldest   oldestCache

	// Read-only opens only: segments read as of their previous commit, and
	// segments left out, for Stats.
	torn, unreadable []string
}

// blockCache keeps the last partially read block decoded, so a reader asking
// for fewer records than a block holds does not copy and decode it again.
type blockCache struct {
	seg   *segment
	first uint64
	recs  []record.Record
}

// Stats is a snapshot of the spool.
type Stats struct {
	Records      uint64    // unacknowledged records
	Bytes        int64     // segment files on disk
	Segments     int       // segment files in use
	FirstSeq     uint64    // first unacknowledged seq (0 if none)
	LastSeq      uint64    // last seq handed out (0 if none ever)
	AckedThrough uint64    // contiguous acknowledgement watermark
	OldestTime   time.Time // receive time of the first unacknowledged record (zero if none)
	// Read-only opens: segments whose last commit did not verify (torn by a
	// crash) and that were read as of the commit before, as the writer will
	// roll them back; and segments that did not verify at all and were left
	// out (the writer quarantines them). Nil otherwise.
	TornSegments, UnreadableSegments []string
}

// Open opens (or creates) the spool in opts.Dir, verifies every segment and
// quarantines the ones that fail, and starts the writer.
func Open(opts Options) (*Spool, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("buffer: create dir: %w", err)
		}
	}
	lf, err := lockDir(opts.Dir, opts.ReadOnly)
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	s := &Spool{
		opts:       opts,
		log:        opts.Logger,
		lockFile:   lf,
		reqs:       make(chan *appendReq),
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		writerDone: make(chan struct{}),
		dataCh:     make(chan struct{}),
		spaceCh:    make(chan struct{}),
		timer:      time.NewTimer(time.Hour),
	}
	s.timer.Stop()
	s.reqPool.New = func() any { return &appendReq{done: make(chan appendResult, 1)} }
	s.m = newMetrics()
	if err := s.load(); err != nil {
		s.closeFiles()
		return nil, fmt.Errorf("buffer: %w", err)
	}
	if err := s.m.register(s, opts.Registerer); err != nil {
		s.closeFiles()
		return nil, fmt.Errorf("buffer: %w", err)
	}
	if opts.ReadOnly {
		close(s.writerDone)
	} else {
		go s.writer()
	}
	st := s.counts()
	s.log.Info("spool opened", "dir", opts.Dir, "segments", st.Segments, "bytes", st.Bytes,
		"records", st.Records, "first_seq", st.FirstSeq, "next_seq", s.next)
	return s, nil
}

func (s *Spool) load() error {
	if !s.opts.ReadOnly {
		if err := removeTemps(s.opts.Dir); err != nil {
			return err
		}
	}
	files, err := listSegments(s.opts.Dir)
	if err != nil {
		return err
	}
	// lastEnd is where the last good segment ends; qFloor bounds the seqs of
	// a quarantined segment after it.
	lastEnd, qFloor := uint64(1), uint64(0)
	for _, f := range files {
		if f.first < lastEnd {
			s.quarantine(f.path, fmt.Errorf("starts at seq %d inside the previous segment (ends before %d): %w", f.first, lastEnd, ErrCorrupt))
			continue
		}
		open := openSegment
		if s.opts.openSegment != nil {
			open = s.opts.openSegment
		}
		seg, info, err := open(f, s.opts.ReadOnly)
		if err != nil && transientOpenError(err) {
			// Not damage: the file is fine but cannot be opened now. Rolling
			// back or setting it aside would abandon good records; failing
			// Open lets the caller retry once the cause is fixed.
			return fmt.Errorf("buffer: open segment %s: %w", f.path, err)
		}
		rolledBack := false
		if err != nil && !errors.Is(err, bolterrors.ErrTimeout) && s.opts.ReadOnly {
			// Read what the writer would keep, without touching the file.
			if rseg, rinfo, rerr := openRolledBack(f); rerr == nil {
				s.log.Warn("spool segment's last commit did not verify; read as of the commit before (run rolls it back on disk)", "segment", filepath.Base(f.path), "err", err)
				s.torn = append(s.torn, filepath.Base(f.path))
				seg, info, err = rseg, rinfo, nil
			}
		}
		if err != nil && !errors.Is(err, bolterrors.ErrTimeout) && !s.opts.ReadOnly {
			// A segment may end in a commit a power cut interrupted: the
			// newest one, or one the spool left after a failed fdatasync.
			if rerr := rollbackLastCommit(f); rerr == nil {
				s.log.Warn("spool rolled back the last commit of a segment that did not verify", "segment", filepath.Base(f.path), "err", err)
				rolledBack = true
				seg, info, err = open(f, false)
			}
		}
		if err != nil {
			if errors.Is(err, bolterrors.ErrTimeout) {
				return fmt.Errorf("%s: %w", f.path, ErrInUse)
			}
			// Seqs in an unreadable segment must never be handed out again: a
			// record takes at least one byte on disk, so first+size is past
			// every seq it could hold.
			if st, serr := os.Stat(f.path); serr == nil {
				qFloor = max(qFloor, f.first+uint64(st.Size()))
			}
			s.quarantine(f.path, err)
			continue
		}
		s.acked = max(s.acked, info.acked)
		s.segs = append(s.segs, seg)
		s.bytes += seg.size
		lastEnd, qFloor = seg.end, 0
		if rolledBack {
			// If the damage was not a torn commit after all, the rolled-back
			// seqs may have been acknowledged and delivered: never reuse them.
			qFloor = f.first + uint64(seg.size)
		}
	}
	floor := max(qFloor, quarantinedFloor(s.opts.Dir, lastEnd))
	if len(files) == 0 && s.opts.FirstSeq > floor {
		// A new spool: nothing below FirstSeq exists, so it counts as
		// acknowledged, and FirstUnacked and the stats start there.
		floor = s.opts.FirstSeq
		s.acked = floor - 1
	}
	s.next = floor
	if s.opts.ReadOnly {
		s.advanceLocked()
		return nil
	}
	if len(s.segs) == 0 || s.segs[len(s.segs)-1].end < floor {
		seg, err := createSegment(s.opts.Dir, floor, s.acked)
		if err != nil {
			return err
		}
		s.segs = append(s.segs, seg)
		s.bytes += seg.size
	}
	s.persisted = s.acked
	for len(s.segs) > 1 && s.segs[0].end-1 <= s.acked {
		seg := s.segs[0]
		s.segs = s.segs[1:]
		s.bytes -= seg.size
		s.closeAndRemove(seg)
	}
	s.advanceLocked()
	return nil
}

// quarantine renames an unusable segment file aside and reports it.
func (s *Spool) quarantine(path string, cause error) {
	if s.opts.ReadOnly {
		s.unreadable = append(s.unreadable, filepath.Base(path))
		s.log.Error("spool segment failed verification (read-only: left in place)", "segment", filepath.Base(path), "err", cause)
		return
	}
	dst := path + quarantineSuffix
	if _, err := os.Stat(dst); err == nil {
		dst = fmt.Sprintf("%s.%d%s", path, time.Now().UnixNano(), quarantineSuffix)
	}
	s.m.quarantined.Inc()
	if err := os.Rename(path, dst); err != nil {
		s.log.Error("spool segment failed verification and could not be moved aside", "segment", filepath.Base(path), "err", cause, "rename_err", err)
		return
	}
	_ = atomicfile.SyncDir(s.opts.Dir)
	s.log.Error("spool segment quarantined", "segment", filepath.Base(path), "moved_to", filepath.Base(dst), "err", cause)
}

// Append makes recs durable and returns the seq of the first; the others
// follow in order. It blocks while the spool is full under policy block.
// If it returns an error, recs are not durable: none was stored, or, after a
// failed fdatasync only, they were written but may not survive a crash; a
// retry then stores them again, and if they survive they are delivered
// twice (at least once, never lost).
func (s *Spool) Append(ctx context.Context, recs ...record.Record) (uint64, error) {
	return s.append(ctx, s.opts.MaxBytes, recs)
}

// AppendReserved is Append for the records bgpedge makes itself rather than
// receives (synthetic peer-downs). Under policy block it waits for space
// only once the spool is ReserveBytes beyond MaxBytes: a start on a full
// spool must be able to spool them before the listener and the forwarder
// that would free space are running, so it must not wait for that space.
// The reserve is only ever used by such records, whose number is bounded by
// the peers that were up, so it lasts many crash-restart cycles.
func (s *Spool) AppendReserved(ctx context.Context, recs ...record.Record) (uint64, error) {
	limit := s.opts.MaxBytes
	if limit > 0 {
		limit += ReserveBytes(limit)
	}
	return s.append(ctx, limit, recs)
}

// ReserveBytes is how far beyond maxBytes AppendReserved may fill a spool:
// 1/32 of it, at least 1 MiB (about 10,000 synthetic peer-downs).
func ReserveBytes(maxBytes int64) int64 { return max(maxBytes/32, mib) }

func (s *Spool) append(ctx context.Context, limit int64, recs []record.Record) (uint64, error) {
	if s.opts.ReadOnly {
		return 0, ErrReadOnly
	}
	select {
	case <-s.stop:
		return 0, ErrClosed
	default:
	}
	if len(recs) == 0 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.next, nil
	}
	start := time.Now()
	if err := s.waitSpace(ctx, limit); err != nil {
		return 0, err
	}
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	req := s.reqPool.Get().(*appendReq)
	var err error
	if req.chunk, err = appendChunk(req.chunk[:0], recs); err != nil {
		s.putReq(req)
		return 0, fmt.Errorf("buffer: append: %w", err)
	}
	req.n = len(recs)
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		s.putReq(req)
		return 0, ctx.Err()
	case <-s.stop:
		s.putReq(req)
		return 0, ErrClosed
	}
	// Once the writer has the records they may become durable, so the caller
	// waits for the outcome rather than its context.
	res := <-req.done
	s.putReq(req)
	s.m.appendDuration.Observe(time.Since(start).Seconds())
	return res.first, res.err
}

func (s *Spool) putReq(r *appendReq) {
	if cap(r.chunk) > 2*s.opts.BatchBytes {
		r.chunk = nil
	}
	s.reqPool.Put(r)
}

// waitSpace implements policy block: wait while the spool holds limit
// bytes or more.
func (s *Spool) waitSpace(ctx context.Context, limit int64) error {
	if s.opts.Policy != PolicyBlock || limit <= 0 {
		return nil
	}
	counted := false
	for {
		s.mu.Lock()
		if s.bytes < limit {
			s.mu.Unlock()
			return nil
		}
		ch := s.spaceCh
		s.maybeKickLocked()
		s.mu.Unlock()
		if !counted {
			s.m.blocked.Inc()
			counted = true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stop:
			return ErrClosed
		}
	}
}

// AckPersistInterval is how often, at most, an acknowledgement waits to be
// made durable while nothing is appended (a commit persists it at once).
// Everything acknowledged since is delivered again after a crash, so it
// bounds the duplicates a crash costs: what the forwarder acknowledges in
// this interval, plus what it had handed to a sink and not yet acknowledged.
// Each persist that has something to write costs one small commit and one
// fdatasync, at most ten a second.
const AckPersistInterval = 100 * time.Millisecond

func (s *Spool) writer() {
	defer close(s.writerDone)
	period := AckPersistInterval
	if s.opts.MaxAge > 0 {
		period = min(period, max(s.opts.MaxAge/4, 10*time.Millisecond))
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	batch := make([]*appendReq, 0, 256)
	for {
		select {
		case r := <-s.reqs:
			batch = s.gather(append(batch[:0], r))
			s.commit(batch)
			clear(batch)
		case <-s.kick:
			s.maintain(false)
		case <-tick.C:
			s.maintain(true)
		case <-s.stop:
			for {
				select {
				case r := <-s.reqs:
					s.commit([]*appendReq{r})
					continue
				default:
				}
				break
			}
			s.mu.Lock()
			acked := s.acked
			s.mu.Unlock()
			s.stopErr = s.persistAcked(acked)
			return
		}
	}
}

// gather coalesces concurrent appenders into one commit. It waits (at most
// MaxDelay) only while appenders other than those in the batch are inside
// Append: on their way, or just answered by the previous commit and likely
// to come straight back. A lone appender pays no delay.
func (s *Spool) gather(batch []*appendReq) []*appendReq {
	n, size := batch[0].n, len(batch[0].chunk)
	var deadline time.Time
loop:
	for n < s.opts.BatchRecords && size < s.opts.BatchBytes {
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
			n, size = n+r.n, size+len(r.chunk)
			continue
		default:
		}
		if s.opts.MaxDelay < 0 || s.inflight.Load() <= int64(len(batch)) {
			break
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(s.opts.MaxDelay)
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			break
		}
		s.timer.Reset(wait)
		select {
		case r := <-s.reqs:
			s.timer.Stop()
			batch = append(batch, r)
			n, size = n+r.n, size+len(r.chunk)
		case <-s.timer.C:
			break loop
		}
	}
	return batch
}

func (s *Spool) commit(batch []*appendReq) {
	n := 0
	for _, r := range batch {
		n += r.n
	}
	var value []byte
	if len(batch) == 1 {
		value = batch[0].chunk
	} else {
		s.wbuf = s.wbuf[:0]
		for _, r := range batch {
			s.wbuf = append(s.wbuf, r.chunk...)
		}
		value = s.wbuf
	}
	start := time.Now()
	first, err := s.write(value, n)
	if err != nil {
		reason := "io"
		if errors.Is(err, ErrFull) {
			reason = "full"
		}
		s.m.commitErrors.WithLabelValues(reason).Inc()
		if !s.failing {
			s.log.Error("spool commit failed; appends fail until it succeeds again", "reason", reason, "err", err)
			s.failing = true
		}
		err = fmt.Errorf("buffer: commit: %w", err)
		for _, r := range batch {
			r.done <- appendResult{err: err}
		}
		return
	}
	if s.failing {
		s.log.Info("spool commits succeed again")
		s.failing = false
	}
	s.m.commitDuration.Observe(time.Since(start).Seconds())
	s.m.batchRecords.Observe(float64(n))
	s.m.appended.Add(float64(n))
	seq := first
	for _, r := range batch {
		n := uint64(r.n) // r belongs to its appender again once answered
		r.done <- appendResult{first: seq}
		seq += n
	}
	if cap(s.wbuf) > 2*s.opts.BatchBytes {
		s.wbuf = nil
	}
	s.mu.Lock()
	act := s.segs[len(s.segs)-1]
	rotate := act.size >= s.opts.SegmentBytes && act.end > act.first
	s.mu.Unlock()
	if rotate {
		_ = s.rotate()
	}
	s.maintain(false)
}

// write stores one block in the active segment, and reclaims the pages of
// its acknowledged blocks in the same transaction.
func (s *Spool) write(value []byte, n int) (uint64, error) {
	s.mu.Lock()
	seg := s.segs[len(s.segs)-1]
	first, acked := s.next, s.acked
	// A segment never holds more seqs than its file has bytes, so a segment
	// that is later found unreadable still bounds the seqs it may have held
	// (see load). Only reclaimed pages let the seqs outgrow the file.
	full := seg.end > seg.first && seg.end+uint64(n)-seg.first > uint64(seg.size)
	s.mu.Unlock()
	// After a failed fdatasync the segment's last commit may be lost on disk
	// while later ones persist: a new segment keeps that commit the last of
	// its segment, where a torn commit is rolled back at open, instead of a
	// hole in the middle that would set the whole segment aside.
	if s.syncFailed {
		full = true
	}
	if full {
		if err := s.rotate(); err != nil {
			return 0, classify(fmt.Errorf("rotate: %w", err))
		}
		s.syncFailed = false
		s.mu.Lock()
		seg = s.segs[len(s.segs)-1]
		s.mu.Unlock()
	}
	err := update(seg.db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlocks())
		// Keys only ever grow: full pages waste no space.
		b.FillPercent = 1
		stored := s.persisted
		if acked > stored {
			if err := tx.Bucket(bucketMeta()).Put(keyAcked(), binary.BigEndian.AppendUint64(nil, acked)); err != nil {
				return err
			}
			stored = acked
		}
		if !s.opts.KeepAcked {
			if err := reclaim(b, first, stored); err != nil {
				return err
			}
		}
		return putBlock(b, first, value)
	})
	if err != nil {
		return 0, classify(err) // rolled back: no trace on disk or in memory
	}
	// Committed in bbolt (page cache). If the sync fails the records are of
	// unknown durability: the appenders get the error and will retry, and
	// the state still advances so bbolt and the spool agree and no seq is
	// reused; if the records survive they are delivered twice (at least once).
	syncStart := time.Now()
	syncErr := s.syncSegment(seg)
	s.m.syncDuration.Observe(time.Since(syncStart).Seconds())
	if acked > s.persisted && syncErr == nil {
		s.persisted = acked
	}
	size := seg.size
	if st, err := os.Stat(seg.path); err == nil {
		size = st.Size()
	}
	now := time.Now()
	s.mu.Lock()
	s.next = first + uint64(n)
	seg.end = s.next
	s.bytes += size - seg.size
	seg.size = size
	seg.lastWrite = now
	close(s.dataCh)
	s.dataCh = make(chan struct{})
	s.mu.Unlock()
	if syncErr != nil {
		s.syncFailed = true
		return 0, classify(fmt.Errorf("sync: %w", syncErr))
	}
	return first, nil
}

// syncSegment is the fdatasync that ends a commit.
func (s *Spool) syncSegment(seg *segment) error {
	if s.opts.syncHook != nil {
		if err := s.opts.syncHook(); err != nil {
			return err
		}
	}
	if s.opts.noSync {
		return nil
	}
	return seg.db.Sync()
}

// update runs fn in a write transaction. bbolt rolls back a failed commit
// itself (and rebuilds its free list), so the file stays as it was before.
func update(db *bolt.DB, fn func(*bolt.Tx) error) (err error) {
	tx, err := db.Begin(true)
	if err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			func() {
				defer func() { _ = recover() }()
				_ = tx.Rollback()
			}()
			err = fmt.Errorf("%w: %v: %w", errPanic, r, ErrCorrupt)
		}
	}()
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func classify(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrFull, err)
	}
	return err
}

// maintain runs in the writer: it persists the ack watermark, deletes fully
// acknowledged segments and enforces capacity and age.
func (s *Spool) maintain(tick bool) {
	s.mu.Lock()
	acked := s.acked
	act := s.segs[len(s.segs)-1]
	activeAcked := act.end > act.first && act.end-1 <= acked
	over := s.opts.MaxBytes > 0 && s.bytes >= s.opts.MaxBytes
	deletable := len(s.segs) > 1 && s.segs[0].end-1 <= acked
	s.mu.Unlock()
	// Under pressure a fully acknowledged active segment is rotated so it can
	// be deleted; otherwise a budget smaller than a segment could deadlock.
	if over && activeAcked && s.rotate() == nil {
		deletable = true
	}
	if deletable || tick {
		_ = s.persistAcked(acked) // counted and logged; retried at the next maintain
	}
	s.deleteAcked()
	if s.opts.Policy == PolicyDropOldest && s.opts.MaxBytes > 0 {
		s.enforce(dropCapacity, func(seg *segment) bool { return s.bytes > s.opts.MaxBytes })
	}
	if tick && s.opts.MaxAge > 0 {
		cutoff := time.Now().Add(-s.opts.MaxAge)
		s.enforce(dropAge, func(seg *segment) bool { return seg.end > seg.first && seg.lastWrite.Before(cutoff) })
	}
}

// persistAcked makes the watermark durable in the active segment. Deleting
// a segment waits for this, so an acknowledged and deleted segment can never
// come back as unacknowledged, even if its unlink is lost to a power cut.
func (s *Spool) persistAcked(acked uint64) error {
	if acked <= s.persisted {
		return nil
	}
	if s.syncFailed {
		// Not after the doubtful commit: a new segment, which stores the
		// watermark as it is created, keeps that commit the last of its own.
		if err := s.rotate(); err == nil {
			s.syncFailed = false
			if s.persisted >= acked {
				return nil
			}
		}
	}
	s.mu.Lock()
	seg := s.segs[len(s.segs)-1]
	s.mu.Unlock()
	err := update(seg.db, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta()).Put(keyAcked(), binary.BigEndian.AppendUint64(nil, acked))
	})
	if err == nil {
		if err = s.syncSegment(seg); err != nil {
			s.syncFailed = true
		}
	}
	if err != nil {
		// Acknowledged segments stay on disk until this succeeds.
		s.m.ackPersistErrors.Inc()
		if n, ok := s.ackLog.Allow(); ok {
			s.log.Warn("spool could not persist the ack watermark; acknowledged segments are kept until it can",
				"acked_through", acked, "err", err, "suppressed_since_last", n)
		}
		return fmt.Errorf("buffer: persist ack watermark: %w", err)
	}
	s.persisted = acked
	return nil
}

func (s *Spool) deleteAcked() {
	for {
		s.mu.Lock()
		if len(s.segs) < 2 {
			s.mu.Unlock()
			return
		}
		seg := s.segs[0]
		if seg.end > seg.first && seg.end-1 > s.persisted {
			s.mu.Unlock()
			return
		}
		s.segs = s.segs[1:]
		s.bytes -= seg.size
		s.spaceFreedLocked()
		s.mu.Unlock()
		s.closeAndRemove(seg)
	}
}

// enforce drops oldest segments while cond holds for the oldest one,
// rotating the active segment first when it is the only one.
func (s *Spool) enforce(reason string, cond func(oldest *segment) bool) {
	for {
		s.mu.Lock()
		seg := s.segs[0]
		if !cond(seg) {
			s.mu.Unlock()
			return
		}
		if len(s.segs) == 1 {
			s.mu.Unlock()
			if seg.end == seg.first || s.rotate() != nil {
				return
			}
			continue
		}
		s.segs = s.segs[1:]
		s.bytes -= seg.size
		lo := max(seg.first, s.acked+1)
		var lost uint64
		if seg.end > lo {
			lost = seg.end - lo
			for _, p := range s.pending {
				if p.lo >= lo && p.hi < seg.end {
					lost -= p.hi - p.lo + 1
				}
			}
			s.acked = seg.end - 1
		}
		s.advanceLocked()
		s.spaceFreedLocked()
		s.mu.Unlock()
		if lost > 0 {
			s.m.dropped.WithLabelValues(reason).Add(float64(lost))
			s.log.Warn("spool dropped unacknowledged records", "reason", reason,
				"first_seq", lo, "last_seq", seg.end-1, "records", lost, "segment", filepath.Base(seg.path))
		}
		s.closeAndRemove(seg)
	}
}

func (s *Spool) rotate() error {
	s.mu.Lock()
	next, acked := s.next, s.acked
	act := s.segs[len(s.segs)-1]
	s.mu.Unlock()
	if act.first == next {
		return nil
	}
	if h := s.opts.syncHook; h != nil { // the new segment is fdatasync'd too
		if err := h(); err != nil {
			return err
		}
	}
	seg, err := createSegment(s.opts.Dir, next, acked)
	if err != nil {
		s.log.Warn("spool could not start a new segment", "err", err)
		return err
	}
	s.persisted = max(s.persisted, acked)
	s.mu.Lock()
	s.segs = append(s.segs, seg)
	s.bytes += seg.size
	s.mu.Unlock()
	return nil
}

func (s *Spool) closeAndRemove(seg *segment) {
	s.cacheMu.Lock()
	if s.cache.seg == seg {
		s.cache = blockCache{}
	}
	s.cacheMu.Unlock()
	// Close waits for read transactions still running on the file.
	_ = seg.db.Close()
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("spool could not delete segment", "segment", filepath.Base(seg.path), "err", err)
	}
}

func (s *Spool) spaceFreedLocked() {
	close(s.spaceCh)
	s.spaceCh = make(chan struct{})
}

// maybeKickLocked wakes the writer when acknowledgements let it delete a
// segment or, under pressure, rotate a fully acknowledged active one.
func (s *Spool) maybeKickLocked() {
	if s.opts.ReadOnly {
		return
	}
	act := s.segs[len(s.segs)-1]
	if (len(s.segs) > 1 && s.segs[0].end-1 <= s.acked) ||
		(s.opts.MaxBytes > 0 && s.bytes >= s.opts.MaxBytes && act.end > act.first && act.end-1 <= s.acked) {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// AckThrough acknowledges every seq ≤ seq.
func (s *Spool) AckThrough(seq uint64) error {
	if s.opts.ReadOnly {
		return ErrReadOnly
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq >= s.next {
		return fmt.Errorf("buffer: ack through %d (next is %d): %w", seq, s.next, ErrUnknownSeq)
	}
	if seq <= s.acked {
		return nil
	}
	s.acked = seq
	s.advanceLocked()
	s.maybeKickLocked()
	return nil
}

// Ack acknowledges one seq. Out-of-order acks are remembered in memory until
// the gap below them closes; after a restart they are delivered again.
func (s *Spool) Ack(seq uint64) error {
	if s.opts.ReadOnly {
		return ErrReadOnly
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq == 0 || seq >= s.next {
		return fmt.Errorf("buffer: ack %d (next is %d): %w", seq, s.next, ErrUnknownSeq)
	}
	if seq <= s.acked {
		return nil
	}
	s.pending = insertRange(s.pending, seqRange{seq, seq})
	s.advanceLocked()
	s.maybeKickLocked()
	return nil
}

// insertRange adds r to a sorted list of disjoint ranges, merging neighbours.
func insertRange(rs []seqRange, r seqRange) []seqRange {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].hi+1 >= r.lo })
	j := i
	for j < len(rs) && rs[j].lo <= r.hi+1 {
		r.lo = min(r.lo, rs[j].lo)
		r.hi = max(r.hi, rs[j].hi)
		j++
	}
	if i == j {
		rs = append(rs, seqRange{})
		copy(rs[i+1:], rs[i:])
		rs[i] = r
		return rs
	}
	rs[i] = r
	return append(rs[:i+1], rs[j:]...)
}

// advanceLocked moves the watermark over acknowledged ranges and over seqs
// that no longer exist (deleted, dropped or quarantined).
func (s *Spool) advanceLocked() {
	for {
		for len(s.pending) > 0 && s.pending[0].lo <= s.acked+1 {
			s.acked = max(s.acked, s.pending[0].hi)
			s.pending = s.pending[1:]
		}
		f := s.acked + 1
		moved := false
		for _, seg := range s.segs {
			if seg.end <= f {
				continue
			}
			if seg.first > f {
				s.acked = seg.first - 1
				moved = true
			}
			break
		}
		if !moved {
			return
		}
	}
}

// FirstUnacked is the lowest seq not yet acknowledged; where a forwarder
// starts reading after a restart.
func (s *Spool) FirstUnacked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked()
	return s.acked + 1
}

// Read returns up to maxRecords records with seq ≥ from, in seq order,
// blocking until at least one exists or ctx is done. Records that no longer
// exist (acknowledged and deleted, dropped, unreadable) are skipped. The
// returned records do not alias spool memory that changes later. On a
// read-only spool Read never waits and may return no records.
func (s *Spool) Read(ctx context.Context, from uint64, maxRecords int) ([]record.Record, error) {
	if maxRecords <= 0 {
		maxRecords = 1
	}
	for {
		s.mu.Lock()
		ch := s.dataCh
		s.mu.Unlock()
		select {
		case <-s.stop:
			return nil, ErrClosed
		default:
		}
		recs, err := s.readAvailable(from, maxRecords)
		if err != nil || len(recs) > 0 || s.opts.ReadOnly {
			return recs, err // nothing can arrive in a read-only spool
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.stop:
			return nil, ErrClosed
		}
	}
}

// transientOpenError reports whether a segment failed to open for a reason
// outside the file's contents: permissions, or the process being out of
// memory or file descriptors.
func transientOpenError(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// corruptRangeError reports an unreadable block, seqs [lo, hi).
type corruptRangeError struct {
	lo, hi uint64
	err    error
}

func (e *corruptRangeError) Error() string {
	return fmt.Sprintf("seqs %d to %d unreadable: %v", e.lo, e.hi-1, e.err)
}
func (e *corruptRangeError) Unwrap() error { return e.err }

func (s *Spool) readAvailable(from uint64, maxRecords int) ([]record.Record, error) {
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		from = max(from, 1)
		for _, b := range s.bad {
			if from >= b.lo && from <= b.hi {
				from = b.hi + 1
			}
		}
		var seg *segment
		for _, sg := range s.segs {
			if sg.end > max(from, sg.first) {
				seg = sg
				break
			}
		}
		if seg == nil {
			s.mu.Unlock()
			return nil, nil
		}
		from = max(from, seg.first)
		end := seg.end
		s.mu.Unlock()
		recs, err := s.readSegment(seg, from, end, maxRecords)
		if err == nil {
			if len(recs) == 0 {
				// Cannot happen for a verified segment; avoid spinning.
				return nil, fmt.Errorf("buffer: read %d: no block in segment %s", from, filepath.Base(seg.path))
			}
			return recs, nil
		}
		if errors.Is(err, bolterrors.ErrDatabaseNotOpen) && attempt < 100 {
			continue // segment deleted or closed under us: look again
		}
		var cerr *corruptRangeError
		if errors.As(err, &cerr) && s.skipCorrupt(seg, cerr) {
			continue
		}
		return nil, fmt.Errorf("buffer: read %d: %w", from, err)
	}
}

// skipCorrupt handles unreadable data found after start-up: the range is
// counted as dropped, logged, and skipped from now on. The file itself is
// quarantined at the next start, when verification fails. It reports
// whether the range was new: a range already skipped that is met again would
// make the reader loop, so it is an error instead.
func (s *Spool) skipCorrupt(seg *segment, cerr *corruptRangeError) bool {
	s.mu.Lock()
	for _, b := range s.bad {
		if cerr.lo >= b.lo && cerr.hi-1 <= b.hi {
			s.mu.Unlock()
			return false
		}
	}
	lo := max(cerr.lo, s.acked+1)
	var lost uint64
	if cerr.hi > lo {
		lost = cerr.hi - lo
		for _, b := range s.bad { // skipped before: counted then
			if olo, ohi := max(lo, b.lo), min(cerr.hi-1, b.hi); olo <= ohi {
				lost -= ohi - olo + 1
			}
		}
		s.pending = insertRange(s.pending, seqRange{lo, cerr.hi - 1})
	}
	s.bad = insertRange(s.bad, seqRange{cerr.lo, cerr.hi - 1})
	s.advanceLocked()
	s.mu.Unlock()
	s.m.dropped.WithLabelValues(dropCorrupt).Add(float64(lost))
	s.log.Error("spool block unreadable; its records are skipped", "segment", filepath.Base(seg.path),
		"first_seq", cerr.lo, "last_seq", cerr.hi-1, "unacknowledged", lost, "err", cerr.err)
	return true
}

func (s *Spool) readSegment(seg *segment, from, end uint64, maxRecords int) ([]record.Record, error) {
	// out is, while it comes from one decoded block, a slice of that
	// block's records (capacity cut to its length, so that appending the
	// next block's copies rather than writing into the cached rest): a
	// read batch is most often within one block, and copying it cost an
	// allocation of its size per read. Nobody writes to records read.
	var out []record.Record
	want := int(min(uint64(maxRecords), end-from))
	take := func(recs []record.Record) {
		if out == nil {
			out = recs[:len(recs):len(recs)]
			return
		}
		if len(out)+len(recs) > cap(out) {
			grown := make([]record.Record, len(out), max(want, len(out)+len(recs)))
			copy(grown, out)
			out = grown
		}
		out = append(out, recs...)
	}
	// Serve from the decoded block kept by the previous partial read.
	s.cacheMu.Lock()
	if c := s.cache; c.seg == seg && from >= c.first && from < c.first+uint64(len(c.recs)) {
		i := int(from - c.first)
		j := min(len(c.recs), i+maxRecords)
		take(c.recs[i:j])
		from += uint64(j - i)
		if j == len(c.recs) {
			s.cache = blockCache{}
		}
	}
	s.cacheMu.Unlock()
	// A read that already holds half its records stops at the block's end
	// rather than copying them beside the next block's (a copy of the
	// batch, half its records' pointers written again): the next read
	// starts with that block.
	enough := max(1, maxRecords/2)
	if len(out) >= enough || from >= end {
		return out, nil
	}
	err := safeView(seg.db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlocks())
		c := b.Cursor()
		k, _ := c.Seek(seqKey(from))
		if k == nil {
			k, _ = c.Last()
		} else if binary.BigEndian.Uint64(k) > from {
			if pk, _ := c.Prev(); pk != nil {
				k = pk
			} else {
				k, _ = c.First()
			}
		}
		for ; k != nil && len(out) < enough; k, _ = c.Next() {
			bf := binary.BigEndian.Uint64(k)
			if bf >= end {
				// Committed in bbolt but not yet synced: not durable, and
				// its seqs are not handed out until Append returns for them.
				break
			}
			v, err := blockValue(b, k)
			var recs []record.Record
			if err == nil {
				recs, err = decodeBlock(bytes.Clone(v), bf, nil)
			}
			if err != nil {
				hi := end
				if nk, _ := c.Next(); nk != nil {
					hi = binary.BigEndian.Uint64(nk)
				}
				return &corruptRangeError{lo: bf, hi: hi, err: err}
			}
			be := bf + uint64(len(recs))
			if be <= from {
				continue
			}
			i := int(from - min(from, bf))
			j := min(len(recs), i+maxRecords-len(out))
			take(recs[i:j])
			from = bf + uint64(j)
			if j < len(recs) {
				s.cacheMu.Lock()
				s.cache = blockCache{seg: seg, first: bf, recs: recs}
				s.cacheMu.Unlock()
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, errPanic) {
			if len(out) > 0 {
				// Hand out what was read before the damage; the next read
				// starts there and finds it.
				return out, nil
			}
			// The page structure itself is broken: skip the rest of the segment.
			return nil, &corruptRangeError{lo: from, hi: end, err: err}
		}
		if len(out) > 0 && errors.As(err, new(*corruptRangeError)) {
			return out, nil // hand out what was good; the next read hits the bad block
		}
		return nil, err
	}
	return out, nil
}

// Stats returns a snapshot, including the receive time of the oldest
// unacknowledged record (one block read).
func (s *Spool) Stats() Stats {
	st := s.counts()
	st.TornSegments, st.UnreadableSegments = slices.Clone(s.torn), slices.Clone(s.unreadable)
	if st.Records > 0 {
		st.OldestTime = s.recordTime(st.FirstSeq)
	}
	return st
}

// oldestCache remembers the receive time of one seq: Stats runs on every
// metrics scrape, and the first unacknowledged seq often has not moved.
type oldestCache struct {
	seq uint64
	t   time.Time
}

// recordTime is the receive time of record seq, zero when it cannot be
// read. It walks the record's block in place, up to that record, rather
// than copying and decoding the whole block (up to batch_bytes, thousands
// of records) as a Read would, and leaves the reader's block cache alone:
// a scrape that replaced it made the forwarder decode its block again.
// Unreadable data is left for the reader to find and report.
func (s *Spool) recordTime(seq uint64) time.Time {
	s.oldestMu.Lock()
	if c := s.oldest; c.seq == seq && seq != 0 {
		s.oldestMu.Unlock()
		return c.t
	}
	s.oldestMu.Unlock()
	s.mu.Lock()
	for _, b := range s.bad { // as Read does: the first readable record
		if seq >= b.lo && seq <= b.hi {
			seq = b.hi + 1
		}
	}
	var seg *segment
	for _, sg := range s.segs {
		if seq >= sg.first && seq < sg.end {
			seg = sg
			break
		}
	}
	closed := s.closed
	s.mu.Unlock()
	if seg == nil || closed {
		return time.Time{}
	}
	var t time.Time
	found := false
	err := safeView(seg.db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlocks())
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, _ := c.Seek(seqKey(seq))
		if k == nil {
			k, _ = c.Last()
		} else if binary.BigEndian.Uint64(k) > seq {
			k, _ = c.Prev()
		}
		if k == nil {
			return nil
		}
		v, err := blockValue(b, k)
		if err != nil {
			return err
		}
		t, found, err = timeInBlock(v, binary.BigEndian.Uint64(k), seq)
		return err
	})
	if err != nil || !found {
		return time.Time{}
	}
	s.oldestMu.Lock()
	s.oldest = oldestCache{seq: seq, t: t}
	s.oldestMu.Unlock()
	return t
}

func (s *Spool) counts() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked()
	st := Stats{Bytes: s.bytes, Segments: len(s.segs), AckedThrough: s.acked}
	if s.next > 1 {
		st.LastSeq = s.next - 1
	}
	f := s.acked + 1
	for _, seg := range s.segs {
		if lo := max(seg.first, f); seg.end > lo {
			st.Records += seg.end - lo
		}
	}
	for _, p := range s.pending {
		st.Records -= min(st.Records, p.hi-p.lo+1)
	}
	if st.Records > 0 {
		st.FirstSeq = f
	}
	return st
}

// Quarantined lists the segment files of dir that were moved aside.
func Quarantined(dir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(dir, segPrefix+"*"+quarantineSuffix))
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	return m, nil
}

func (s *Spool) oldestAge() time.Duration {
	t := s.Stats().OldestTime
	if t.IsZero() {
		return 0
	}
	return max(0, time.Since(t))
}

// Close stops the writer after committing appends already handed to it,
// persists the ack watermark and closes the files. It is idempotent.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.writerDone
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.closeErr = errors.Join(s.stopErr, s.closeFiles())
		if s.opts.Registerer != nil {
			s.m.unregister(s.opts.Registerer)
		}
	})
	return s.closeErr
}

func (s *Spool) closeFiles() error {
	var errs []error
	s.mu.Lock()
	segs := s.segs
	s.mu.Unlock()
	for _, seg := range segs {
		if err := seg.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", filepath.Base(seg.path), err))
		}
	}
	if s.lockFile != nil {
		_ = s.lockFile.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("buffer: close: %w", err)
	}
	return nil
}
