package forwarder

import (
	"context"
	"errors"
	"testing"

	"github.com/bgpedge/bgpedge/record"
)

// TestTrackerWatermark: the watermark passes a record only once every one
// of its messages is acked; a duplicate report of a message never counts
// twice; a failure stops the watermark at its record.
func TestTrackerWatermark(t *testing.T) {
	failed := 0
	tr := newTracker(func() { failed++ })
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

// TestTrackerWaitRoom: a batch waiting for room is let through once it fits
// by count and by bytes, or once nothing is in flight, or at a failure.
func TestTrackerWaitRoom(t *testing.T) {
	ctx := context.Background()
	tr := newTracker(nil)
	var msgs []*Outgoing
	for seq := uint64(1); seq <= 10; seq++ {
		m := &Outgoing{Seq: seq, Index: -1, Value: make([]byte, 100)}
		tr.add(seq, 1)
		tr.addBytes(msgBytes(m))
		msgs = append(msgs, m)
	}
	wait := func(n, size, maxMsgs, maxBytes int) <-chan error {
		done := make(chan error, 1)
		go func() { done <- tr.waitRoom(ctx, n, size, maxMsgs, maxBytes) }()
		return done
	}
	pending := func(done <-chan error) bool {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	// By count: 5 more fit under 10 once 5 are acked, not after 4.
	done := wait(5, 0, 10, 1<<30)
	for _, m := range msgs[:4] {
		tr.ack(m, nil)
	}
	if !pending(done) {
		t.Fatal("waitRoom returned with 6 of 10 in flight and 5 more asked")
	}
	tr.ack(msgs[4], nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// By bytes: one message's worth of room.
	one := msgBytes(msgs[5])
	done = wait(1, one, 100, 5*one)
	tr.ack(msgs[5], nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Too large for any room: let through alone once nothing is in flight.
	done = wait(1000, 0, 10, 1<<30)
	for _, m := range msgs[6:9] {
		tr.ack(m, nil)
	}
	if !pending(done) {
		t.Fatal("waitRoom returned with messages in flight and no room")
	}
	tr.ack(msgs[9], nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A failure ends the wait with the error.
	m := &Outgoing{Seq: 11, Index: -1}
	tr.add(11, 1)
	tr.add(12, 1)
	done = wait(5, 0, 2, 1<<30)
	tr.ack(m, errors.New("refused"))
	if err := <-done; err == nil {
		t.Fatal("waitRoom returned nil after a failure")
	}
}

// countOwner counts its releases.
type countOwner struct{ n int }

func (c *countOwner) Release() { c.n++ }

// TestTrackerReleasesOwner: a message's owner is released once, when the
// sink acknowledges it, never for a duplicate report, a failure, or a
// success reported after the failure.
func TestTrackerReleasesOwner(t *testing.T) {
	tr := newTracker(func() {})
	var ok, failed countOwner
	m1 := &Outgoing{Seq: 1, Index: -1, owner: &ok, Value: []byte("abc")}
	m2 := &Outgoing{Seq: 2, Index: -1, owner: &failed}
	tr.add(1, 1)
	tr.add(2, 1)
	tr.ack(m1, nil)
	tr.ack(m1, nil)
	tr.ack(m2, errors.New("refused"))
	tr.ack(m2, nil)
	if ok.n != 1 || failed.n != 0 {
		t.Fatalf("released %d times when acknowledged (want 1), %d times when failed (want 0)", ok.n, failed.n)
	}
	if msgs, bytes := tr.delivered(); msgs != 1 || bytes != 3 {
		t.Fatalf("%d messages of %d bytes counted as delivered, want 1 of 3", msgs, bytes)
	}
}

// TestTrackerGaps: records whose seqs are not consecutive (ranges skipped
// as damaged) are found all the same.
func TestTrackerGaps(t *testing.T) {
	tr := newTracker(func() {})
	seqs := []uint64{3, 4, 9, 10, 30}
	for _, s := range seqs {
		tr.add(s, 1)
	}
	for _, s := range []uint64{10, 4, 30, 3} {
		tr.ack(&Outgoing{Seq: s, Index: -1}, nil)
	}
	if wm, n := tr.watermark(); wm != 4 || n != 2 {
		t.Fatalf("watermark %d (%d records), want 4 (2): record 9 is not acked", wm, n)
	}
	tr.ack(&Outgoing{Seq: 9, Index: -1}, nil)
	if wm, _ := tr.watermark(); wm != 30 {
		t.Fatalf("watermark %d, want 30", wm)
	}
}

// holdOwner counts the holders of its memory.
type holdOwner struct{ refs int }

func (h *holdOwner) Release() { h.refs-- }
func (h *holdOwner) Hold()    { h.refs++ }

// TestOutgoingShare: a message a Sequencer adds over another's bytes holds
// their owner once more, so they are reused only when both are
// acknowledged; a dropped message lets go of its hold once.
func TestOutgoingShare(t *testing.T) {
	tr := newTracker(func() {})
	h := &holdOwner{refs: 1}
	m := &Outgoing{Seq: 1, Index: 0, owner: h, Value: []byte("route")}
	rm := &Outgoing{Seq: 1, Index: 1, Value: m.Value}
	rm.Share(m)
	if h.refs != 2 || rm.owner != record.Releaser(h) {
		t.Fatalf("after Share: %d holders, owner %v; want 2, shared", h.refs, rm.owner)
	}
	tr.add(1, 2)
	tr.ack(m, nil)
	if h.refs != 1 {
		t.Fatalf("%d holders once the first message was acknowledged, want 1: the second still reads the bytes", h.refs)
	}
	tr.ack(rm, nil)
	if h.refs != 0 {
		t.Fatalf("%d holders once both were acknowledged, want 0", h.refs)
	}

	d := &holdOwner{refs: 1}
	dropped := &Outgoing{owner: d}
	dropped.Discard()
	dropped.Discard()
	if d.refs != 0 {
		t.Fatalf("a dropped message left %d holders, want 0 (released once)", d.refs)
	}

	// An owner that cannot be held twice is taken from the message: both
	// are left to the garbage collector, never released early.
	var c countOwner
	m2 := &Outgoing{owner: &c}
	rm2 := &Outgoing{}
	rm2.Share(m2)
	if m2.owner != nil || rm2.owner != nil {
		t.Fatalf("a Releaser that is not a Holder was shared: %v %v", m2.owner, rm2.owner)
	}
}
