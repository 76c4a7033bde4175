package pipeline

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCloseWithinBounded: a close that never returns is left behind once
// the shutdown deadline and the grace have passed; one that finishes in
// time returns its own error.
func TestCloseWithinBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	stuck := make(chan struct{})
	defer close(stuck)
	start := time.Now()
	err := CloseWithin(ctx, 100*time.Millisecond, "spool", func() error { <-stuck; return nil })
	if err == nil || !strings.Contains(err.Error(), "close spool: still blocked") {
		t.Fatalf("stuck close: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("returned after %v", d)
	}
	if err := CloseWithin(context.Background(), time.Millisecond, "journal", func() error { return errors.New("disk gone") }); err == nil || err.Error() != "close journal: disk gone" {
		t.Fatalf("failed close: %v", err)
	}
}
