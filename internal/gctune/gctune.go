// Package gctune owns the Go runtime's garbage-collector settings of the
// bgpedge processes: a higher GOGC than Go's default, bounded by a soft
// memory limit, unless the operator set GOGC or GOMEMLIMIT.
//
// Why: the forwarder allocates a little per message at hundreds of
// thousands of messages per second, and with Go's default GOGC=100 a
// quarter of its CPU went to garbage collection (docs/BENCHMARKS.md,
// Forwarder). A live heap of tens of MiB makes a larger heap goal cheap.
// The soft limit is the edge budget: an agent at full drain speed stays
// within 100 MiB of anonymous memory (the live heap is bounded in bytes:
// read-buffer budget, forwarder.max_in_flight_bytes), and the collector
// works harder instead of letting GOGC=300 grow the heap to 4× the live
// one. At 512 MiB, the earlier limit, RssAnon reached 160–510 MiB in
// scripts/bench-e2e.sh.
package gctune

import (
	"runtime/debug"
)

// Defaults applied by Apply when the environment does not set them.
const (
	Percent     = 300
	MemoryLimit = 80 << 20
)

// Settings reports the settings in effect, for the start-up log line.
type Settings struct {
	Percent     int   // the GC percent in effect (-1: off)
	MemoryLimit int64 // the soft memory limit in effect, bytes
	FromEnv     bool  // GOGC or GOMEMLIMIT came from the environment
}

// Current reads the settings in effect without changing them.
func Current(getenv func(string) string) Settings {
	s := Settings{FromEnv: getenv("GOGC") != "" || getenv("GOMEMLIMIT") != ""}
	// Reading a setting means setting it; put the value straight back.
	s.Percent = debug.SetGCPercent(-1)
	debug.SetGCPercent(s.Percent)
	s.MemoryLimit = debug.SetMemoryLimit(-1)
	return s
}

// Apply sets GOGC and GOMEMLIMIT to the defaults above where getenv
// reports them unset, and returns the settings in effect.
func Apply(getenv func(string) string) Settings {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(Percent)
	}
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(MemoryLimit)
	}
	return Current(getenv)
}
