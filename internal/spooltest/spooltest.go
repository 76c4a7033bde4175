// Package spooltest prepares spools for tests that run the real agent and
// read its spool afterwards. It is a package of its own because the buffer
// package's own tests import testenv.
package spooltest

import (
	"testing"

	"github.com/bgpedge/bgpedge/buffer"
)

// SeedAtOne creates the spool in dir with its first seq at 1, unless it
// exists. The agent starts a new spool at the clock (buffer.SeqFromClock);
// oracles that count records from the start of a run index them by seq, and
// an agent that finds this spool goes on from it.
func SeedAtOne(t testing.TB, dir string) {
	t.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: dir, FirstSeq: 1})
	if err != nil {
		t.Fatalf("seed spool %s: %v", dir, err)
	}
	if err := sp.Close(); err != nil {
		t.Fatalf("seed spool %s: %v", dir, err)
	}
}
