package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// NewLogger builds the agent's logger: JSON or text on w, at a level that
// can change while running (level is shared with Apply).
func NewLogger(w io.Writer, format string, level *slog.LevelVar) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsText}
	switch format {
	case "json", "":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format: must be json or text, not %q", format)
}

// durationsAsText writes durations as "1.5s", not as JSON nanoseconds, so
// an operator reads "failover_after":"30s" rather than 30000000000.
func durationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// limitedLogger logs a repeated condition (a retry loop, a recurring error)
// once per interval and key, with the number of suppressed repeats, so an
// outage that lasts hours writes tens of lines, not millions.
type limitedLogger struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	seen map[string]*limitState
}

type limitState struct {
	last       time.Time
	suppressed int
}

func newLimitedLogger(log *slog.Logger, every time.Duration) *limitedLogger {
	return &limitedLogger{log: log, every: every, now: time.Now, seen: map[string]*limitState{}}
}

// Error logs msg at error level unless key was logged less than the interval ago.
func (l *limitedLogger) Error(key, msg string, args ...any) { l.emit(slog.LevelError, key, msg, args) }

// Warn is Error at warn level.
func (l *limitedLogger) Warn(key, msg string, args ...any) { l.emit(slog.LevelWarn, key, msg, args) }

func (l *limitedLogger) emit(level slog.Level, key, msg string, args []any) {
	l.mu.Lock()
	st, ok := l.seen[key]
	if !ok {
		st = &limitState{}
		l.seen[key] = st
	}
	now := l.now()
	if ok && now.Sub(st.last) < l.every {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := st.suppressed
	st.last, st.suppressed = now, 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Log(context.Background(), level, msg, args...)
}

// logEnvWarnings logs the BGPEDGE_* variables of the process environment
// that set nothing (EnvWarnings).
func logEnvWarnings(log *slog.Logger) {
	for _, w := range EnvWarnings(os.Environ()) {
		log.Warn("environment variable ignored", "problem", w)
	}
}
