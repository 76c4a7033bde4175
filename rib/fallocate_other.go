//go:build unix && !linux

package rib

import (
	"errors"
	"os"
)

// fallocate: no portable call here; allocate writes zeros instead.
func fallocate(*os.File, int64) error { return errors.ErrUnsupported }
