package bmp

import (
	"sync"
	"sync/atomic"

	"github.com/bgpedge/bgpedge/record"
)

// outChunk is a chunk the fast path's outputs are cut from, shared by the
// messages of about a hundred route events. It counts who still holds it:
// the fastState cutting from it, and each output emitted from it (its
// record.Output.Owner). When the last one lets go, the chunk goes back to
// its pool and is cut again, instead of being left to the garbage
// collector: at hundreds of thousands of events a second the JSON outputs
// were a third of the bytes the agent allocated, and collecting them a
// large part of its CPU (docs/BENCHMARKS.md, "End to end, decoded").
//
// A consumer that never calls Release (a test, a dropped message, a
// failed sink session) leaves the chunk to the garbage collector, as
// before: only a release too many would be wrong, which is why an owner is
// released once, by whoever acknowledges the message.
type outChunk struct {
	buf  []byte
	refs atomic.Int64
	pool *sync.Pool // nil: an oversized chunk, not reused
}

var _ record.Holder = (*outChunk)(nil)

// Release lets go of one reference.
func (c *outChunk) Release() {
	if c.refs.Add(-1) == 0 && c.pool != nil {
		c.pool.Put(c)
	}
}

// Hold adds a reference, for a consumer that makes a second message of
// an output's bytes (record.Holder).
func (c *outChunk) Hold() { c.refs.Add(1) }

// hold adds n references, before outputs that point into c are emitted.
func (c *outChunk) hold(n int) { c.refs.Add(int64(n)) }

// chunkReserve is the room a fastState wants left in its chunk before it
// encodes a message straight into it; a message that does not fit after
// all is copied into a new chunk.
const chunkReserve = 4 << 10

// newChunkPool makes the pool an Encoder's fast path takes its chunks from.
func newChunkPool() *sync.Pool {
	p := &sync.Pool{}
	p.New = func() any { return &outChunk{buf: make([]byte, outputChunk), pool: p} }
	return p
}

// ensureChunk makes sure the current chunk has at least want bytes left,
// retiring it and taking a fresh one from pool when not.
func (st *fastState) ensureChunk(pool *sync.Pool, want int) {
	if st.cur != nil && len(st.chunk) >= want {
		return
	}
	if st.cur != nil {
		st.cur.Release() // the cutter's reference
		st.cur, st.chunk = nil, nil
	}
	if want > outputChunk {
		c := &outChunk{buf: make([]byte, want)}
		c.refs.Store(1)
		st.cur, st.chunk = c, c.buf
		return
	}
	c := pool.Get().(*outChunk)
	c.refs.Store(1)
	st.cur, st.chunk = c, c.buf[:outputChunk]
}

// carve returns the first n bytes of the current chunk (capacity n: a
// consumer appending to one cannot reach the next), which must have them.
func (st *fastState) carve(n int) []byte {
	b := st.chunk[:n:n]
	st.chunk = st.chunk[n:]
	return b
}
