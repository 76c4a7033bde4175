package buffer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/record"
)

// spoolModel is the obvious in-memory spool the real one must agree with.
type spoolModel struct {
	recs    map[uint64]record.Record
	next    uint64
	acked   uint64
	pending map[uint64]bool
}

func (m *spoolModel) advance() {
	for m.pending[m.acked+1] {
		delete(m.pending, m.acked+1)
		m.acked++
	}
}

func (m *spoolModel) unacked() uint64 { return m.next - 1 - m.acked - uint64(len(m.pending)) }

// TestModel runs random sequences of append, read, ack, single ack and
// close-and-reopen against a spool with tiny segments (so rotation and
// deletion happen all the time) and compares every answer with spoolModel.
// Reproduce a failure with BGPEDGE_BUFFER_MODEL_SEED=<seed>.
func TestModel(t *testing.T) {
	t.Parallel() // waits on fsync; overlaps with the other slow tests
	seeds := 12
	base := uint64(time.Now().UnixNano())
	if v := os.Getenv("BGPEDGE_BUFFER_MODEL_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		base, seeds = n, 1
	}
	for i := 0; i < seeds; i++ {
		seed := base + uint64(i)
		if err := runModel(t, seed, 150); err != nil {
			t.Fatalf("seed %d (rerun with BGPEDGE_BUFFER_MODEL_SEED=%d): %v", seed, seed, err)
		}
	}
}

func runModel(t *testing.T, seed uint64, steps int) error {
	rng := rand.New(rand.NewPCG(seed, 0))
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 16 << 10}
	s, err := Open(opts)
	if err != nil {
		return err
	}
	defer func() {
		if s != nil { // nil after a failed reopen, whose error is returned
			_ = s.Close()
		}
	}()
	m := &spoolModel{recs: map[uint64]record.Record{}, next: 1, pending: map[uint64]bool{}}
	ctx := context.Background()
	for step := 0; step < steps; step++ {
		op := rng.IntN(100)
		switch {
		case op < 35: // append
			recs := testRecords(rng, 1+rng.IntN(20), 1+rng.IntN(3000))
			first, err := s.Append(ctx, recs...)
			if err != nil {
				return fmt.Errorf("step %d append: %w", step, err)
			}
			if first != m.next {
				return fmt.Errorf("step %d: append got first %d, model %d", step, first, m.next)
			}
			for i, r := range recs {
				r.Seq = first + uint64(i)
				m.recs[r.Seq] = r
			}
			m.next += uint64(len(recs))
		case op < 60: // read
			lo := uint64(1)
			if m.acked > 5 {
				lo = m.acked - 5
			}
			from := lo + uint64(rng.IntN(int(m.next-lo)+3))
			maxN := 1 + rng.IntN(50)
			got, err := s.readAvailable(from, maxN)
			if err != nil {
				return fmt.Errorf("step %d read(%d): %w", step, from, err)
			}
			if err := m.checkRead(from, maxN, got); err != nil {
				return fmt.Errorf("step %d read(%d, %d): %w", step, from, maxN, err)
			}
		case op < 75: // ack through
			x := m.acked + uint64(rng.IntN(int(m.next-m.acked)+1)) // may be == next: must fail
			err := s.AckThrough(x)
			if x >= m.next {
				if !errors.Is(err, ErrUnknownSeq) {
					return fmt.Errorf("step %d: ack through %d beyond %d: %v", step, x, m.next-1, err)
				}
				break
			}
			if err != nil {
				return fmt.Errorf("step %d ack through %d: %w", step, x, err)
			}
			if x > m.acked {
				m.acked = x
				for p := range m.pending {
					if p <= x {
						delete(m.pending, p)
					}
				}
				m.advance()
			}
		case op < 90: // single ack
			if m.next-1 <= m.acked {
				break
			}
			x := m.acked + 1 + uint64(rng.IntN(int(m.next-1-m.acked)))
			if err := s.Ack(x); err != nil {
				return fmt.Errorf("step %d ack %d: %w", step, x, err)
			}
			m.pending[x] = true
			m.advance()
		default: // close and reopen: out-of-order acks are forgotten
			if err := s.Close(); err != nil {
				return fmt.Errorf("step %d close: %w", step, err)
			}
			if s, err = Open(opts); err != nil {
				return fmt.Errorf("step %d reopen: %w", step, err)
			}
			clear(m.pending)
		}
		if f := s.FirstUnacked(); f != m.acked+1 {
			return fmt.Errorf("step %d: first unacked %d, model %d", step, f, m.acked+1)
		}
		if st := s.counts(); st.Records != m.unacked() || st.LastSeq != m.next-1 {
			return fmt.Errorf("step %d: stats records %d last %d, model %d last %d", step, st.Records, st.LastSeq, m.unacked(), m.next-1)
		}
	}
	// Everything unacknowledged is still there, in order, intact.
	all := readAll(t, s, m.acked+1)
	return m.checkRead(m.acked+1, len(all)+1, all)
}

// checkRead: records start at from, or later only across acknowledged seqs
// (which may have been deleted); they are consecutive and match the model.
func (m *spoolModel) checkRead(from uint64, maxN int, got []record.Record) error {
	if max(from, m.acked+1) >= m.next { // nothing unacknowledged at or after from
		if from >= m.next && len(got) != 0 {
			return fmt.Errorf("%d records beyond the end", len(got))
		}
		if len(got) == 0 {
			return nil
		}
	} else if len(got) == 0 {
		return fmt.Errorf("no records, %d unacknowledged exist", m.next-max(from, m.acked+1))
	}
	if len(got) > maxN {
		return fmt.Errorf("got %d records (max %d, %d exist)", len(got), maxN, m.next-from)
	}
	if got[0].Seq < from || got[0].Seq > max(from, m.acked+1) {
		return fmt.Errorf("first record %d, want from %d (acked through %d)", got[0].Seq, from, m.acked)
	}
	for i, r := range got {
		if r.Seq != got[0].Seq+uint64(i) {
			return fmt.Errorf("record %d has seq %d after %d", i, r.Seq, got[0].Seq)
		}
		if err := sameRecord(r, m.recs[r.Seq]); err != nil {
			return fmt.Errorf("seq %d: %w", r.Seq, err)
		}
	}
	return nil
}
