package forwarder

import (
	"context"
	"math"
	"sort"
	"sync"
	"time"
)

// tracker follows one sink session's records from hand-over to ack and
// computes the watermark: the highest seq below which every record's
// messages are all acknowledged. A failed message stops the watermark at its
// record for good (the session then ends and the next one re-reads from it).
type tracker struct {
	mu       sync.Mutex
	room     *sync.Cond
	entries  []entry // in seq order; entries[head:] are not yet below the watermark
	head     int
	inflight int
	bytes    int    // msgBytes of the messages in flight
	done     uint64 // watermark: every record ≤ done is fully acked (0: none yet)
	doneRecs int    // records that passed the watermark, for metrics
	err      error  // first failure
	failedAt time.Time
	onFail   func()
	// Acknowledged without error: messages, and the bytes of their values.
	ackedMsgs, ackedBytes uint64
	// want is what the goroutine in waitRoom waits for; acks wake it only
	// once that fits (or nothing is in flight), not on each ack: a read
	// batch waits for thousands of acks, and a wake-up per ack cost a
	// scheduler round trip per message.
	want roomWant
}

type roomWant struct {
	waiting           bool
	n, size           int
	maxMsgs, maxBytes int
}

type entry struct {
	seq       uint64
	remaining int
	failed    bool
	open      bool // more messages of this record follow (a record handed over in parts)
}

func newTracker(onFail func()) *tracker {
	t := &tracker{onFail: onFail}
	t.room = sync.NewCond(&t.mu)
	return t
}

// add registers a record and how many messages it was encoded into.
func (t *tracker) add(seq uint64, msgs int) { t.addPart(seq, msgs, false) }

// addPart registers msgs more messages of record seq; open says more parts
// follow, which holds the watermark below seq (however many of its messages
// are already acknowledged) until the last part is added.
func (t *tracker) addPart(seq uint64, msgs int, open bool) {
	t.mu.Lock()
	if n := len(t.entries); n > t.head && t.entries[n-1].seq == seq && t.entries[n-1].open {
		e := &t.entries[n-1]
		e.remaining += msgs
		e.open = open
	} else {
		t.entries = append(t.entries, entry{seq: seq, remaining: msgs, open: open})
	}
	t.inflight += msgs
	t.advance()
	t.mu.Unlock()
}

// addBytes counts the msgBytes of messages about to be handed to the sink;
// their acks take them off again.
func (t *tracker) addBytes(n int) {
	t.mu.Lock()
	t.bytes += n
	t.mu.Unlock()
}

// msgBytes is what a message counts against max_in_flight_bytes: its key,
// value and headers, and msgOverhead for what the forwarder and the sink's
// client hold beside them (the Outgoing, sarama's ProducerMessage and
// record headers, the id): with small raw BMP messages that is most of it.
//
// It is computed once, when the forwarder counts the message before
// handing it to the sink (the goroutine that encoded it), and kept: the
// ack takes off what was added, without walking the headers again.
func msgBytes(m *Outgoing) int {
	if m.size > 0 {
		return int(m.size)
	}
	n := len(m.Key) + len(m.Value) + msgOverhead
	for i := range m.headerCount() {
		n += len(m.header(i).Value)
	}
	m.size = int32(min(n, math.MaxInt32))
	return n
}

// msgOverhead is measured as about 450 bytes a message on amd64 (heap
// profile of a raw-only drain), rounded up.
const msgOverhead = 512

// ack is the sinks' AckFunc.
func (t *tracker) ack(m *Outgoing, err error) {
	t.mu.Lock()
	live := t.entries[t.head:]
	// Records' seqs are consecutive but for the gaps of skipped damage:
	// look where the record would be if there were none first.
	i := len(live)
	if len(live) > 0 && m.Seq >= live[0].seq {
		if k := m.Seq - live[0].seq; k < uint64(len(live)) && live[k].seq == m.Seq {
			i = int(k)
		}
	}
	if i == len(live) {
		i = sort.Search(len(live), func(i int) bool { return live[i].seq >= m.Seq })
	}
	if i == len(live) || live[i].seq != m.Seq || m.reported {
		t.mu.Unlock()
		return // already counted (duplicate report): never double-count
	}
	m.reported = true
	e := &live[i]
	t.inflight--
	t.bytes -= msgBytes(m)
	first := false
	if err != nil {
		e.failed = true
		if t.err == nil {
			t.err, t.failedAt, first = err, time.Now(), true
		}
	} else {
		t.ackedMsgs++
		t.ackedBytes += uint64(len(m.Value))
		e.remaining--
		if e.remaining == 0 {
			t.advance()
		}
	}
	if err != nil || t.inflight == 0 || (t.want.waiting && t.fits(t.want)) {
		t.room.Broadcast()
	}
	t.mu.Unlock()
	if err == nil && m.owner != nil {
		// Acknowledged: the sink is done with the bytes, and the session
		// never re-sends this message (a retry re-reads the record from
		// the spool and encodes it anew). A failed message keeps them:
		// left to the garbage collector.
		m.owner.Release()
	}
	if first && t.onFail != nil {
		t.onFail()
	}
}

// delivered returns how many messages were acknowledged without error, and
// the bytes of their values.
func (t *tracker) delivered() (msgs, valueBytes uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ackedMsgs, t.ackedBytes
}

// advance moves the watermark over fully acked records; t.mu held.
func (t *tracker) advance() {
	for t.head < len(t.entries) {
		e := t.entries[t.head]
		if e.remaining > 0 || e.failed || e.open {
			break
		}
		t.done = e.seq
		t.doneRecs++
		t.head++
	}
	// Compact once the dead prefix dominates, keeping appends amortised O(1).
	if t.head > 4096 && t.head*2 > len(t.entries) {
		n := copy(t.entries, t.entries[t.head:])
		t.entries = t.entries[:n]
		t.head = 0
	}
}

// waitRoom blocks until n more messages of size bytes fit under max
// messages and maxBytes bytes in flight, the session failed, or ctx ends. A
// batch larger than either is let through alone.
func (t *tracker) waitRoom(ctx context.Context, n, size, max, maxBytes int) error {
	stop := context.AfterFunc(ctx, func() {
		t.mu.Lock()
		t.room.Broadcast()
		t.mu.Unlock()
	})
	defer stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	w := roomWant{waiting: true, n: n, size: size, maxMsgs: max, maxBytes: maxBytes}
	for t.inflight > 0 && !t.fits(w) && t.err == nil && ctx.Err() == nil {
		t.want = w
		t.room.Wait()
	}
	t.want = roomWant{}
	if t.err != nil {
		return t.err
	}
	return ctx.Err()
}

// fits reports whether w's messages fit beside those in flight; t.mu held.
func (t *tracker) fits(w roomWant) bool {
	return t.inflight+w.n <= w.maxMsgs && t.bytes+w.size <= w.maxBytes
}

// drain blocks until nothing is in flight or ctx ends.
func (t *tracker) drain(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() {
		t.mu.Lock()
		t.room.Broadcast()
		t.mu.Unlock()
	})
	defer stop()
	t.mu.Lock()
	for t.inflight > 0 && ctx.Err() == nil {
		t.room.Wait()
	}
	t.mu.Unlock()
}

// watermark returns the highest fully acked seq (0 if none) and how many
// records passed it since the last call.
func (t *tracker) watermark() (uint64, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.doneRecs
	t.doneRecs = 0
	return t.done, n
}

func (t *tracker) failure() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// failedSince is when the first message failed (zero if none did).
func (t *tracker) failedSince() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failedAt
}
