package forwarder

import (
	"errors"
	"testing"
)

// TestTrackerWatermark: the watermark passes a record only once every one
// of its messages is acked; a duplicate report of a message never counts
// twice; a failure stops the watermark at its record.
func TestTrackerWatermark(t *testing.T) {
	failed := 0
	tr := newTracker(func() { failed++ }, nil)
	msg := func(seq uint64, i int) *Outgoing { return &Outgoing{Seq: seq, Index: i} }
	r1a, r1b, r2, r3 := msg(1, 0), msg(1, 1), msg(2, -1), msg(3, -1)
	tr.add(1, 2)
	tr.add(2, 1)
	tr.add(3, 1)

	tr.ack(r2, nil)
	tr.ack(r1a, nil)
	tr.ack(r1a, nil) // reported twice: must not stand in for r1b
	if wm, _ := tr.watermark(); wm != 0 {
		t.Fatalf("watermark %d with record 1 half acked (a duplicate counted)", wm)
	}
	tr.ack(r1b, nil)
	if wm, n := tr.watermark(); wm != 2 || n != 2 {
		t.Fatalf("watermark %d (%d records), want 2 (2)", wm, n)
	}
	tr.ack(r3, errors.New("refused"))
	tr.ack(r3, nil) // a late success after the failure changes nothing
	if wm, _ := tr.watermark(); wm != 2 || tr.failure() == nil || failed != 1 {
		t.Fatalf("after a failure: watermark %d, failure %v, onFail called %d times", wm, tr.failure(), failed)
	}
}
