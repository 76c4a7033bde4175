//go:build !unix

package rib

import "os"

// mapFile: without mmap the index lives in the heap (the file stays empty).
func mapFile(_ *os.File, size int) ([]byte, error) { return make([]byte, size), nil }

func unmapFile([]byte) error { return nil }

func mapExisting(*os.File, int64) ([]byte, error) { return nil, errHeapIndex }

func syncMapping([]byte) error { return errHeapIndex }
