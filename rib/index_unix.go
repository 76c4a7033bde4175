//go:build unix

package rib

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// mapFile sizes f to size bytes (zeros), gives them their disk blocks and
// maps it shared, read-write.
func mapFile(f *os.File, size int) ([]byte, error) {
	if err := f.Truncate(int64(size)); err != nil {
		return nil, err
	}
	if err := allocate(f, int64(size), true); err != nil {
		return nil, err
	}
	return syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
}

// allocate gives f's first size bytes their disk blocks now. A page of a
// shared mapping that has none gets them when it is first written, and
// when the disk is full then, the kernel can only answer the write with
// SIGBUS, which Go cannot recover from: the agent died, and died again
// rebuilding the index at every start until the disk had room. Allocated
// here, a full disk is an error of the open or of a growth. Where the file
// system cannot allocate without writing, a fresh (all-zero) file is
// written with zeros; an existing one is left as it is.
func allocate(f *os.File, size int64, fresh bool) error {
	err := fallocate(f, size)
	if err == nil || !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	if !fresh {
		return nil
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), size-off)], off); err != nil {
			return err
		}
	}
	return nil
}

func unmapFile(b []byte) error { return syscall.Munmap(b) }

// mapExisting maps f, which must be size bytes, shared, read-write.
func mapExisting(f *os.File, size int64) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != size {
		return nil, fmt.Errorf("%s: %d bytes, want %d", f.Name(), st.Size(), size)
	}
	if err := allocate(f, size, false); err != nil {
		return nil, err
	}
	return syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
}

// syncMapping writes a shared mapping's dirty pages to its file.
func syncMapping(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, _, errno := syscall.Syscall(syscall.SYS_MSYNC, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MS_SYNC)
	if errno != 0 {
		return errno
	}
	return nil
}
