package gctune

import (
	"runtime/debug"
	"testing"
)

func TestApply(t *testing.T) {
	prevPercent := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		debug.SetGCPercent(prevPercent)
		debug.SetMemoryLimit(prevLimit)
	})
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	if s := Apply(env(nil)); s.Percent != Percent || s.MemoryLimit != MemoryLimit || s.FromEnv {
		t.Errorf("defaults: %+v", s)
	}
	// An operator's GOGC (which the runtime read at start; here set by
	// hand) is left alone, and so is the limit when GOMEMLIMIT is set.
	debug.SetGCPercent(150)
	debug.SetMemoryLimit(1 << 30)
	if s := Apply(env(map[string]string{"GOGC": "150", "GOMEMLIMIT": "1GiB"})); s.Percent != 150 || s.MemoryLimit != 1<<30 || !s.FromEnv {
		t.Errorf("from env: %+v", s)
	}
}
