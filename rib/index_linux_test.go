package rib

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestIndexBlocksAllocated: the index's file has its disk blocks from the
// start, for a new table, for a doubled one and for one reused after a
// clean close, so that a full disk is an error of the open or of a growth
// and never a SIGBUS when a page of the mapping is first written. (By
// hand, on a 4 MiB tmpfs with 1 MiB free: "rib: index: map
// .../rib.index.tmp: no space left on device" where a sparse file made the
// agent die of "unexpected fault address ... signal SIGBUS".)
func TestIndexBlocksAllocated(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, IndexFileName)
	allocated := func(what string) {
		t.Helper()
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if blocks := st.Sys().(*syscall.Stat_t).Blocks * 512; blocks < st.Size() {
			t.Fatalf("%s: %d of the index's %d bytes have disk blocks", what, blocks, st.Size())
		}
	}
	ix, err := newIndex(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ix.close() }()
	allocated("new table")
	rng := rand.New(rand.NewPCG(5, 6))
	add := func(n int) {
		cs := make([]ixChange, n)
		for i := range cs {
			cs[i] = ixChange{h: ixHash{rng.Uint64() | 1, rng.Uint64()}, pos: uint64(i)}
		}
		if err := ix.apply(cs); err != nil {
			t.Fatal(err)
		}
	}

	// A few routes, a clean close, and the file made sparse where it is
	// zero, as a version that did not allocate left it.
	add(100)
	if err := ix.closeClean(1); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(len(b))); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(b); off += 4096 {
		page := b[off:min(off+4096, len(b))]
		for _, c := range page {
			if c != 0 {
				if _, err := f.WriteAt(page, int64(off)); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
	}
	_ = f.Close()
	if ix, err = reuseIndex(dir, 1, 100); err != nil {
		t.Fatal(err)
	}
	allocated("table reused")

	slots := ix.mask + 1
	for ix.mask+1 == slots {
		add(1000)
	}
	allocated("doubled table")
}
