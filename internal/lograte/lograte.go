// Package lograte owns log rate limiting for hot paths: a flood of bad
// input, refused connections or drops must not become a flood of log lines.
package lograte

import (
	"sync"
	"time"
)

// Interval is how often a Limiter lets a line through.
const Interval = time.Second

// Limiter lets one log line through per Interval and counts the rest. The
// zero value is ready to use; it is safe for concurrent use.
type Limiter struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// Allow reports whether a line may be logged now and, if so, how many were
// held back since the last one that was.
func (l *Limiter) Allow() (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.last) < Interval {
		l.suppressed++
		return 0, false
	}
	l.last = now
	n := l.suppressed
	l.suppressed = 0
	return n, true
}
