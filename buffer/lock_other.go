//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package buffer

import "os"

// lockDir relies on bbolt's own file locks where flock is not available.
func lockDir(string, bool) (*os.File, error) { return nil, nil }
