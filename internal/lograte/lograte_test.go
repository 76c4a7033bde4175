package lograte

import (
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
