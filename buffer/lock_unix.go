//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package buffer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// lockDir takes an flock on dir/LOCK: exclusive for the agent, shared for
// read-only inspection, so the CLI gets ErrInUse instead of waiting on bbolt.
func lockDir(dir string, shared bool) (*os.File, error) {
	flag := os.O_RDWR | os.O_CREATE
	if shared {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), flag, 0o640)
	if err != nil {
		if shared && errors.Is(err, os.ErrNotExist) {
			// A spool never opened for writing has no lock file; nothing to share.
			return nil, nil
		}
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	how := syscall.LOCK_EX
	if shared {
		how = syscall.LOCK_SH
	}
	// A lock just released can stay held for a moment: a process forking
	// a child (any exec from a Go program) shares the lock's open file
	// until the child's exec closes it. A holder that stays is another
	// process using the spool.
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if time.Now().After(deadline) {
			_ = f.Close()
			return nil, fmt.Errorf("%s: %w", dir, ErrInUse)
		}
		time.Sleep(lockWait / 50)
	}
}

// lockWait is how long lockDir retries a held lock before ErrInUse.
const lockWait = 500 * time.Millisecond
