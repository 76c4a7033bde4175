// Package buffer is the spool: a durable, segmented write-ahead buffer on
// bbolt with group commit, capacity limits, backpressure and
// acknowledgements. Sources Append records; the forwarder Reads them from a
// cursor and acknowledges them; nothing Append returned for is lost before
// it is acknowledged.
//
// Layout. The directory holds segment files seg-<first seq, 20 digits>.db,
// each a bbolt database with a "blocks" bucket and a "meta" bucket. One
// group commit stores one block: a nested bucket keyed by the block's first
// seq (big-endian) whose single value is the encoded records of every Append
// coalesced into that commit, with a CRC-32C per Append (see block.go). The
// meta bucket holds the acknowledgement watermark as of the last commit. A
// LOCK file (flock) keeps a second process out: it gets ErrInUse.
//
// Writes. Append encodes its records in the caller's goroutine and hands
// them to a single writer goroutine, which puts everything queued (bounded by
// BatchRecords and BatchBytes, waiting at most MaxDelay and only while other
// appenders are inside Append) into one bbolt transaction, commits it and
// fdatasyncs the file once; only then does Append return. bbolt's own two
// syncs per commit (data pages, then meta page) are replaced by that one,
// which halves the fsyncs; the price is that a power cut during the sync can
// leave the new meta page on disk without all its pages. Open detects that
// (block CRCs) in the newest segment and rolls back to the previous commit,
// which was complete; the rolled-back commit was never acknowledged. Seqs are
// assigned at commit, so a failed commit (disk full: ErrFull) leaves no trace
// and consumes no seq. A failed fdatasync is different: the commit is in the
// file with unknown durability, Append returns the error, the retry stores
// the records again under new seqs (at least once), and the next commit
// starts a new segment so the doubtful one stays the last of its segment. The active segment is rotated once it reaches
// SegmentBytes, or before it would hold more seqs than its file has bytes
// (see Reclaiming); a new segment is built under a temporary name and renamed
// into place. Read hands out only what a returned commit made durable: a
// block bbolt has committed but not yet synced is not read.
//
// Acknowledgements. AckThrough/Ack move an in-memory watermark; the writer
// persists it with the next commit (or within a second) and always before it
// deletes a fully acknowledged segment, so a deleted segment can never come
// back as unacknowledged. After a crash the watermark may lag: a few
// acknowledged records are delivered again (at least once).
//
// Reclaiming. Each commit also deletes the active segment's oldest blocks
// that the watermark it stores covers (the newest block always stays, as it
// tells where the segment ends). bbolt reuses their pages, so while
// acknowledgements keep up the active file stays at about the backlog's size
// and commits overwrite blocks the file already has, whose fdatasync is
// cheaper than one that appends. A segment that took more seqs than its size
// in bytes is rotated: an unreadable segment then still bounds the seqs it
// may have held (first seq + size), which Open uses so seqs are never
// reused. Verification accepts a missing prefix of blocks only when the
// segment's own watermark covers it.
//
// Capacity. Bytes are the segment files' sizes. Policy block makes Append wait
// while they exceed MaxBytes; policy drop-oldest deletes whole oldest segments
// instead, counting and logging every unacknowledged record dropped. MaxAge
// drops segments whose newest record is older, under either policy.
//
// Faults. At Open every segment is verified completely (bbolt structure,
// block sequence, every CRC; bbolt panics and memory faults are recovered).
// A segment that fails is renamed to *.quarantined, logged and counted, and
// its seqs are never handed out again. One that cannot be opened for a
// reason outside its contents (permission, out of memory or descriptors)
// fails Open instead, so a fixable condition never costs records. A block found damaged later by Read is
// skipped, counted as dropped (reason corrupt) and logged.
package buffer
