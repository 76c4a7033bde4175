package bmp

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// peakSpool records, at each append, how many records all sessions' batches
// hold together.
type peakSpool struct {
	*memSpool
	l    atomic.Pointer[Listener]
	peak atomic.Int64
}

func (p *peakSpool) Append(ctx context.Context, recs ...record.Record) (uint64, error) {
	if l := p.l.Load(); l != nil {
		for n, m := l.batched.Load(), p.peak.Load(); n > m && !p.peak.CompareAndSwap(m, n); m = p.peak.Load() {
		}
	}
	return p.memSpool.Append(ctx, recs...)
}

// TestBatchedRecordsBounded: with the spool holding every append back, many
// routers streaming at once hold at most the listener-wide batch limit (plus
// one record each) in their batches, not a full batch each; once the spool
// takes them, every message arrives.
func TestBatchedRecordsBounded(t *testing.T) {
	const sessions, msgs = 40, 3000
	gate := make(chan struct{})
	sp := &peakSpool{memSpool: &memSpool{gate: gate}}
	st := startListener(t, sp, func(c *Config) {
		c.MaxMessageBytes = 64 << 10
		c.ReadBufferBytes = 64 << 10
		c.BufferBudgetBytes = 256 << 10
	})
	sp.l.Store(st.l)
	limit := st.l.maxBatched
	if limit != 1024 {
		t.Fatalf("limit %d records for a 256 KiB budget, want the floor 1024", limit)
	}
	stream := [][]byte{initiation(), peerUp(1)}
	for i := range msgs {
		stream = append(stream, routeMonitoring(1, i))
	}
	data := bytes.Join(stream, nil)
	if per := len(data) / len(stream); int64(sessions)*int64(len(data))/int64(per) < 4*limit {
		t.Fatalf("the routers send too little to test a limit of %d", limit)
	}
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: loopbackSource(i)}}
			c, err := d.Dial("tcp4", st.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if _, err := c.Write(data); err != nil {
				t.Error(err)
			}
		})
	}
	// Every session has read and blocks in Append with its batch, or waits
	// to: give them time to collect all they can.
	testenv.Eventually(t, 10*time.Second, "every session appending", func() bool { return sp.attempts.Load() >= sessions })
	testenv.Eventually(t, 10*time.Second, "batches filled", func() bool { return st.l.batched.Load() >= limit })
	time.Sleep(200 * time.Millisecond) // what they would collect beyond the limit, they collect now
	if n := st.l.batched.Load(); n > limit+sessions {
		t.Fatalf("batches hold %d records, limit %d + %d sessions", n, limit, sessions)
	}
	close(gate)
	wg.Wait()
	want := sessions * len(stream)
	testenv.Eventually(t, 20*time.Second, "every message spooled", func() bool { return sp.len() >= want })
	if p := sp.peak.Load(); p > limit+sessions {
		t.Fatalf("batches held %d records at once, limit %d + %d sessions", p, limit, sessions)
	}
	testenv.Eventually(t, 10*time.Second, "batches empty", func() bool { return st.l.batched.Load() == 0 })
}
