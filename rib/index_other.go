//go:build !unix

package rib

import (
	"errors"
	"os"
)

// mapFile: without mmap the index lives in the heap (the file stays empty).
func mapFile(_ *os.File, size int) ([]byte, error) { return make([]byte, size), nil }

func unmapFile([]byte) error { return nil }

// errHeapIndex: an index in the heap is not kept across opens.
var errHeapIndex = errors.New("the index is not kept on this system")

func mapExisting(*os.File, int64) ([]byte, error) { return nil, errHeapIndex }

func syncMapping([]byte) error { return errHeapIndex }
