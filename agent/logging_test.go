package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLoggerFormats(t *testing.T) {
	for _, tt := range []struct{ format, want string }{
		{"json", `"took":"1.5s"`},
		{"text", `took=1.5s`},
	} {
		var buf bytes.Buffer
		log, err := NewLogger(&buf, tt.format, new(slog.LevelVar))
		if err != nil {
			t.Fatal(err)
		}
		log.Info("done", "took", 1500*time.Millisecond)
		if !strings.Contains(buf.String(), tt.want) {
			t.Errorf("%s: %q does not contain %s", tt.format, buf.String(), tt.want)
		}
	}
	if _, err := NewLogger(&bytes.Buffer{}, "xml", new(slog.LevelVar)); err == nil || !strings.Contains(err.Error(), "log.format") {
		t.Errorf("bad format: %v", err)
	}
}
