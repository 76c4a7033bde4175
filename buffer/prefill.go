package buffer

import (
	"fmt"
	"os"
	"sync"
)

const (
	prefillChunk = 1 << 20 // one zero write, the longest the writer waits for it
	prefillSync  = 8 << 20 // bytes written between syncs
)

// prefiller writes the active segment file to its full size (zeros) and
// syncs it, in the background, ahead of bbolt. A commit that lands on blocks
// already allocated and written changes neither the file's size nor its
// extents, so its fdatasync flushes data only and needs no journal commit.
// Measured on ext4 here: a commit into a prefilled segment syncs in about
// two thirds of the time of one that appends to the end of the file, which
// is what bbolt otherwise does on every commit.
//
// Disk use stays within the backlog plus one segment: the spool lets the
// prefiller go on only while no acknowledged-but-kept records sit in an
// older segment (see Spool.mayPrefill) and within max_bytes.
//
// The prefiller and the writer never write the same bytes: the writer holds
// mu for the whole of a write transaction (lock/unlock), and the prefiller
// writes only above both bbolt's high-water mark and what it filled before,
// under mu.
type prefiller struct {
	f     *os.File
	mu    sync.Mutex
	cond  *sync.Cond
	used  int64 // bbolt's high-water mark, bytes
	fill  int64 // written (zeros or data) up to here
	limit int64 // the segment size
	stop  bool
	done  chan struct{}

	may    func(n int64) bool // whether n more bytes of disk may be taken now
	grew   func(n int64)      // the file grew by n bytes
	failed func(error)
}

// startPrefill starts a prefiller for the segment file at path whose bbolt
// data ends at used. A prefiller that fails (a full disk, a file size limit)
// reports once through failed and stops; commits then grow the file
// themselves, as without it.
func startPrefill(path string, used, limit int64, may func(int64) bool, grew func(int64), failed func(error)) (*prefiller, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("prefill: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("prefill: %w", err)
	}
	p := &prefiller{f: f, used: used, fill: st.Size(), limit: limit, done: make(chan struct{}), may: may, grew: grew, failed: failed}
	p.cond = sync.NewCond(&p.mu)
	go p.run()
	return p, nil
}

func (p *prefiller) run() {
	defer close(p.done)
	zeros := make([]byte, prefillChunk)
	unsynced := int64(0)
	for {
		p.mu.Lock()
		for !p.stop && unsynced == 0 && !p.canFill() {
			p.cond.Wait()
		}
		if p.stop {
			p.mu.Unlock()
			return
		}
		var err error
		if p.canFill() {
			start := max(p.fill, p.used)
			n := min(int64(len(zeros)), p.limit-start)
			if _, err = p.f.WriteAt(zeros[:n], start); err == nil {
				p.fill = start + n
				unsynced += n
				p.grew(n)
			}
		}
		more := err == nil && p.canFill()
		p.mu.Unlock()
		if err == nil && unsynced > 0 && (unsynced >= prefillSync || !more) {
			err = p.f.Sync()
			unsynced = 0
		}
		if err != nil {
			p.failed(err)
			return
		}
	}
}

// canFill: there is room left in the segment and the spool allows it.
func (p *prefiller) canFill() bool {
	return max(p.fill, p.used) < p.limit && p.may(prefillChunk)
}

// lock excludes the prefiller's writes for the duration of a write
// transaction on the segment.
func (p *prefiller) lock() { p.mu.Lock() }

// unlock records bbolt's new high-water mark and lets the prefiller go on.
func (p *prefiller) unlock(used int64) {
	p.used = max(p.used, used)
	p.mu.Unlock()
	p.cond.Signal()
}

// poke makes the prefiller look again whether it may go on.
func (p *prefiller) poke() {
	// Under mu, so the signal cannot fall between the prefiller's check and
	// its Wait.
	p.mu.Lock()
	p.cond.Signal()
	p.mu.Unlock()
}

// close stops the prefiller and waits for it.
func (p *prefiller) close() {
	p.mu.Lock()
	p.stop = true
	p.mu.Unlock()
	p.cond.Signal()
	<-p.done
	_ = p.f.Close()
}
