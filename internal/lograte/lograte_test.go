package lograte

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var l Limiter
	if n, ok := l.Allow(); !ok || n != 0 {
		t.Fatalf("first line: %d %v", n, ok)
	}
	for i := range 5 {
		if _, ok := l.Allow(); ok {
			t.Fatalf("line %d within the interval let through", i+2)
		}
	}
	l.mu.Lock()
	l.last = l.last.Add(-Interval - time.Millisecond)
	l.mu.Unlock()
	if n, ok := l.Allow(); !ok || n != 5 {
		t.Fatalf("after the interval: suppressed %d, ok %v; want 5, true", n, ok)
	}
	if _, ok := l.Allow(); ok {
		t.Fatal("the interval did not restart")
	}
}

func TestLogger(t *testing.T) {
	var buf strings.Builder
	l := NewLogger(slog.New(slog.NewTextHandler(&buf, nil)), time.Minute)
	now := time.Unix(0, 0)
	l.now = func() time.Time { return now }
	for range 100 {
		l.Error("k", "broken")
	}
	l.Error("other", "different")
	now = now.Add(2 * time.Minute)
	l.Error("k", "broken")
	out := buf.String()
	if got := strings.Count(out, "msg=broken"); got != 2 {
		t.Fatalf("logged %d times, want 2:\n%s", got, out)
	}
	if !strings.Contains(out, "suppressed=99") || !strings.Contains(out, "msg=different") {
		t.Fatalf("missing suppressed count or other key:\n%s", out)
	}
}
