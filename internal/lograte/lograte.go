// Package lograte owns log rate limiting: a flood of bad input, refused
// connections or drops on a hot path, or a retry loop that lasts as long as
// an outage, must not become a flood of log lines.
package lograte

import (
	"context"
	"log/slog"
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
	return l.allow(time.Now(), Interval)
}

func (l *Limiter) allow(now time.Time, every time.Duration) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < every {
		l.suppressed++
		return 0, false
	}
	l.last = now
	n := l.suppressed
	l.suppressed = 0
	return n, true
}

// Logger logs a repeated condition (a retry loop, a recurring error) once
// per interval and key, with the number of repeats held back, so an outage
// that lasts hours writes tens of lines, not millions.
type Logger struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*Limiter
}

// NewLogger logs to log at most once per every and key.
func NewLogger(log *slog.Logger, every time.Duration) *Logger {
	return &Logger{log: log, every: every, now: time.Now, keys: map[string]*Limiter{}}
}

// Error logs msg at error level unless key was logged less than the interval ago.
func (l *Logger) Error(key, msg string, args ...any) { l.emit(slog.LevelError, key, msg, args) }

// Warn is Error at warn level.
func (l *Logger) Warn(key, msg string, args ...any) { l.emit(slog.LevelWarn, key, msg, args) }

func (l *Logger) emit(level slog.Level, key, msg string, args []any) {
	l.mu.Lock()
	lim, ok := l.keys[key]
	if !ok {
		lim = &Limiter{}
		l.keys[key] = lim
	}
	l.mu.Unlock()
	suppressed, ok := lim.allow(l.now(), l.every)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Log(context.Background(), level, msg, args...)
}
