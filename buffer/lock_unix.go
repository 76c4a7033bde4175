//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package buffer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
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
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrInUse)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}
