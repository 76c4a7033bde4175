package agent

import (
	"fmt"
	"io"
	"log/slog"
	"os"
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

// logEnvWarnings logs the BGPEDGE_* variables of the process environment
// that set nothing (EnvWarnings).
func logEnvWarnings(log *slog.Logger) {
	for _, w := range EnvWarnings(os.Environ()) {
		log.Warn("environment variable ignored", "problem", w)
	}
}
