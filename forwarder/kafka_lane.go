package forwarder

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/internal/lograte"
)

// A lane is one producer with its own sarama client, hence its own
// connection to each broker: the partitions hashed to it are written by it
// alone, so their order holds, while the lanes' requests are in flight at
// the same time (the broker answers one connection's requests one after the
// other).
//
// The lane builds produce requests itself and sends them with
// Broker.AsyncProduce instead of going through sarama's AsyncProducer: that
// producer moves every message through four goroutines and a produceSet of
// its own, which cost about 4 µs of CPU a message, more than all of
// bgpedge's own work per route event (docs/BENCHMARKS.md). Here a batch of
// messages crosses one channel, and a request's records, headers and
// batches come from slabs the lane reuses.
//
// One request per broker is in flight; messages arriving meanwhile wait in
// their partition's queue and go out together in the next request, sent when
// flush_bytes or flush_messages is reached, flush_frequency has passed since
// the oldest arrived, or the lane is flushing for Close. A retriable error
// (a leader moved, a broker restarting, the connection cut) puts the failed
// partitions' messages back at the head of their queues and retries them
// after retry_backoff with fresh metadata, up to retry_max times; a
// partition whose leader is not known waits in limbo, its leader looked up
// again every retry_backoff against the same retries. Any other error, or
// a message out of retries, fails it, which ends the forwarder's session:
// the next one re-reads from the spool (at least once).
type lane struct {
	client  sarama.Client
	cfg     laneConfig
	logger  *slog.Logger
	retries lograte.Limiter

	in chan []laneItem
	// spent takes back the slices of in once their items are queued, for
	// the sink's next Write: one slice a lane a Write was an allocation of
	// about a hundred bytes per message. nil: none taken back.
	spent   chan []laneItem
	results chan laneResult
	flush   chan struct{} // closed by Close: send what is queued, then stop
	kill    chan struct{} // closed when Close gives up: fail what is left, stop now
	done    chan struct{} // closed when the loop has returned

	// ctx ends when the lane is killed: it bounds the dials of its own
	// connections.
	ctx    context.Context
	cancel context.CancelFunc

	// Owned by the loop goroutine.
	parts   map[topicPartition]*partQueue
	brokers map[*sarama.Broker]*brokerQueue
	// The queues of the topics enqueued lately (a few: raw and JSON
	// messages alternate), by partition: a map lookup per message hashed
	// its topic's name each time.
	recent []topicQueues
	err    error // set once the lane failed: every later message fails with it
}

// topicQueues are a topic's partition queues, by partition.
type topicQueues struct {
	topic string
	parts []*partQueue
}

// recentTopics bounds lane.recent.
const recentTopics = 4

type laneConfig struct {
	version int16 // produce request version
	acks    sarama.RequiredAcks
	timeout time.Duration
	codec   sarama.CompressionCodec
	level   int
	// compact holds the compacted topics, whose batches are compressed
	// with compactCodec instead of codec.
	compact      map[string]bool
	compactCodec sarama.CompressionCodec
	maxBatch     int // bytes of one partition's batch (max_message_bytes)
	flushBytes   int
	flushMsgs    int
	flushEvery   time.Duration
	retryMax     int
	retryBackoff time.Duration

	// wire: requests go over the lane's own connections (kafka_wire.go),
	// as records are uncompressed or LZ4 and there is no SASL; otherwise
	// through sarama's broker connections.
	wire         bool
	clientID     string
	tls          *tls.Config
	dialTimeout  time.Duration
	readTimeout  time.Duration
	writeTimeout time.Duration
}

// laneItem is one message on its way through a lane.
type laneItem struct {
	m         *Outgoing
	ack       AckFunc
	topic     string
	partition int32
	size      int32 // recordSize(m), kept
	tries     int32 // failed attempts so far
}

type topicPartition struct {
	topic     string
	partition int32
}

// partQueue holds one partition's messages waiting to be sent, oldest first.
type partQueue struct {
	tp     topicPartition
	broker *brokerQueue // its leader's queue; nil until known
	items  []laneItem   // items[start:] are queued, oldest first
	start  int
	head   int // queued()[:head] are in the request in flight
	listed bool
}

// queued returns the partition's messages not yet written.
func (q *partQueue) queued() []laneItem { return q.items[q.start:] }

// brokerQueue is what a lane sends to one broker.
type brokerQueue struct {
	b       *sarama.Broker
	parts   []*partQueue // with waiting messages, in order of arrival
	waiting int          // messages waiting
	bytes   int          // their estimated size
	since   time.Time    // when the oldest waiting message arrived
	busy    bool         // a request is in flight
	holdTil time.Time    // no request before this (retry backoff)

	wire *wireConn // the lane's own connection (laneConfig.wire), nil until dialled

	// The request in flight: its partitions and how many messages of each.
	sent    []sentPart
	records []sarama.Record
	recPtrs []*sarama.Record
	headers []sarama.RecordHeader
	hdrPtrs []*sarama.RecordHeader
	batches []sarama.RecordBatch
}

type sentPart struct {
	q *partQueue
	n int
}

type laneResult struct {
	q    *brokerQueue
	resp *sarama.ProduceResponse
	err  error
}

// laneConfigOf takes the lane's settings from the forwarder's Kafka
// configuration and the sarama configuration built from it; compact holds
// the compacted topics.
func laneConfigOf(c KafkaConfig, sc *sarama.Config, compact map[string]bool) (laneConfig, error) {
	v, err := produceVersion(sc.Version)
	if err != nil {
		return laneConfig{}, err
	}
	compactCodec := sc.Producer.Compression
	if c.CompactedCompression != "" {
		if compactCodec, err = compressionCodec(c.CompactedCompression); err != nil {
			return laneConfig{}, fmt.Errorf("kafka compacted_compression: %w", err)
		}
	}
	lc := laneConfig{
		version: v, acks: sc.Producer.RequiredAcks, timeout: sc.Producer.Timeout,
		codec: sc.Producer.Compression, level: sc.Producer.CompressionLevel,
		compact: compact, compactCodec: compactCodec,
		maxBatch: c.MaxMessageBytes, flushBytes: c.FlushBytes, flushMsgs: c.FlushMessages,
		flushEvery: c.FlushFrequency, retryMax: c.RetryMax, retryBackoff: c.RetryBackoff,
		wire:     wireCodec(sc.Producer.Compression) && wireCodec(compactCodec) && !sc.Net.SASL.Enable,
		clientID: sc.ClientID, dialTimeout: sc.Net.DialTimeout,
		readTimeout: sc.Net.ReadTimeout, writeTimeout: sc.Net.WriteTimeout,
	}
	if sc.Net.TLS.Enable {
		lc.tls = sc.Net.TLS.Config
	}
	return lc, nil
}

// codecOf is the compression of topic's batches.
func (c *laneConfig) codecOf(topic string) sarama.CompressionCodec {
	if c.compact[topic] {
		return c.compactCodec
	}
	return c.codec
}

// wireCodec tells whether the lanes' own encoding (kafka_wire.go) writes
// batches compressed with c.
func wireCodec(c sarama.CompressionCodec) bool {
	return c == sarama.CompressionNone || c == sarama.CompressionLZ4
}

// produceVersion is the produce request version sarama's own producer
// speaks to a cluster of version v; record batches with headers need 0.11.
func produceVersion(v sarama.KafkaVersion) (int16, error) {
	steps := []struct {
		at sarama.KafkaVersion
		v  int16
	}{
		{sarama.V3_7_0_0, 10}, {sarama.V2_8_0_0, 9}, {sarama.V2_4_0_0, 8}, {sarama.V2_1_0_0, 7},
		{sarama.V2_0_0_0, 6}, {sarama.V1_0_0_0, 5}, {sarama.V0_11_0_0, 3},
	}
	for _, s := range steps {
		if v.IsAtLeast(s.at) {
			return s.v, nil
		}
	}
	return 0, fmt.Errorf("kafka version %s: message headers need at least 0.11.0", v)
}

func newLane(client sarama.Client, cfg laneConfig, logger *slog.Logger) *lane {
	ctx, cancel := context.WithCancel(context.Background())
	return &lane{
		client: client, cfg: cfg, logger: logger, ctx: ctx, cancel: cancel,
		in:      make(chan []laneItem, 64),
		results: make(chan laneResult, 1),
		flush:   make(chan struct{}),
		kill:    make(chan struct{}),
		done:    make(chan struct{}),
		parts:   map[topicPartition]*partQueue{},
		brokers: map[*sarama.Broker]*brokerQueue{},
	}
}

// run is the lane's loop: it owns every queue, sends requests and reports
// acks, until it is flushed empty or killed.
func (l *lane) run() {
	defer close(l.done)
	defer func() {
		for _, bq := range l.brokers {
			if bq.wire != nil {
				bq.wire.close()
			}
		}
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	in, flush, flushing := l.in, l.flush, false
	for {
		select {
		case items := <-in:
			l.enqueue(items)
			l.giveBack(items)
		case r := <-l.results:
			l.complete(r)
		case <-timer.C:
		case <-flush:
			// Write is not called once Close has begun: what is in the
			// channel is all that is left to take.
			flushing = true
			for {
				select {
				case items := <-l.in:
					l.enqueue(items)
					continue
				default:
				}
				break
			}
			in, flush = nil, nil
		case <-l.kill:
			l.abandon(ErrNotConnected)
			return
		}
		next := l.sendReady(flushing)
		if flushing && l.idle() {
			return
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
	}
}

// giveBack hands a slice of items, all queued, back to the sink.
func (l *lane) giveBack(items []laneItem) {
	if l.spent == nil {
		return
	}
	clear(items)
	select {
	case l.spent <- items[:0]:
	default:
	}
}

// enqueue files items under their partitions and their leaders.
func (l *lane) enqueue(items []laneItem) {
	now := time.Now()
	for _, it := range items {
		if l.err != nil {
			it.ack(it.m, l.err)
			continue
		}
		q := l.partQueue(it.topic, it.partition)
		if q.broker == nil {
			if err := l.lead(q); err != nil {
				// Retried like a failed request (relead).
				q.broker = l.limbo(now)
			}
		}
		q.items = append(q.items, it)
		l.waiting(q, 1, int(it.size), now)
	}
}

// partQueue returns the queue of a topic's partition, made on first use.
func (l *lane) partQueue(topic string, partition int32) *partQueue {
	var tq *topicQueues
	for i := range l.recent {
		if l.recent[i].topic == topic {
			tq = &l.recent[i]
			break
		}
	}
	if tq == nil {
		if len(l.recent) == recentTopics {
			l.recent = l.recent[:0]
		}
		l.recent = append(l.recent, topicQueues{topic: topic})
		tq = &l.recent[len(l.recent)-1]
	}
	if partition >= 0 && int(partition) < len(tq.parts) {
		if q := tq.parts[partition]; q != nil {
			return q
		}
	}
	tp := topicPartition{topic, partition}
	q := l.parts[tp]
	if q == nil {
		q = &partQueue{tp: tp}
		l.parts[tp] = q
	}
	if partition >= 0 && partition < 1<<16 {
		for int(partition) >= len(tq.parts) {
			tq.parts = append(tq.parts, nil)
		}
		tq.parts[partition] = q
	}
	return q
}

// limbo is the queue of partitions whose leader is not known (its broker
// is nil): sendReady looks their leaders up again every retry_backoff.
func (l *lane) limbo(now time.Time) *brokerQueue {
	bq := l.brokers[nil]
	if bq == nil {
		bq = &brokerQueue{}
		l.brokers[nil] = bq
	}
	if bq.waiting == 0 {
		bq.holdTil = now.Add(l.cfg.retryBackoff)
	}
	return bq
}

// relead looks up the leaders of the partitions in limbo and reports
// whether it found any; a partition whose leader is still unknown counts a
// failed attempt, and fails the lane once out of retries.
func (l *lane) relead(limbo *brokerQueue) (found bool) {
	now := time.Now()
	for _, q := range append([]*partQueue(nil), limbo.parts...) {
		if len(q.queued()) == 0 {
			continue
		}
		b, err := l.client.Leader(q.tp.topic, q.tp.partition)
		if err == nil {
			l.move(q, l.brokerQueue(b), now)
			found = true
			continue
		}
		items := q.queued()
		for i := range items {
			items[i].tries++
		}
		if int(items[0].tries) > l.cfg.retryMax {
			l.fail(fmt.Errorf("kafka leader of %s/%d: %w: %w", q.tp.topic, q.tp.partition, ErrUnavailable, err))
			l.abandon(l.err)
			return found
		}
	}
	limbo.holdTil = now.Add(l.cfg.retryBackoff)
	return found
}

// move takes q with its messages from its queue to bq.
func (l *lane) move(q *partQueue, bq *brokerQueue, now time.Time) {
	old := q.broker
	size := 0
	for _, it := range q.queued() {
		size += int(it.size)
	}
	old.waiting -= len(q.queued())
	old.bytes -= size
	parts := old.parts[:0]
	for _, p := range old.parts {
		if p != q {
			parts = append(parts, p)
		}
	}
	clear(old.parts[len(parts):])
	old.parts, q.listed, q.broker = parts, false, bq
	l.waiting(q, len(q.queued()), size, now)
}

// lead finds q's leader and its queue.
func (l *lane) lead(q *partQueue) error {
	b, err := l.client.Leader(q.tp.topic, q.tp.partition)
	if err != nil {
		return fmt.Errorf("kafka leader of %s/%d: %w: %w", q.tp.topic, q.tp.partition, ErrUnavailable, err)
	}
	q.broker = l.brokerQueue(b)
	return nil
}

func (l *lane) brokerQueue(b *sarama.Broker) *brokerQueue {
	bq := l.brokers[b]
	if bq == nil {
		bq = &brokerQueue{b: b}
		l.brokers[b] = bq
	}
	return bq
}

// waiting counts n messages of size bytes more as waiting in q.
func (l *lane) waiting(q *partQueue, n, size int, now time.Time) {
	bq := q.broker
	if bq.waiting == 0 {
		bq.since = now
	}
	bq.waiting += n
	bq.bytes += size
	if !q.listed {
		q.listed = true
		bq.parts = append(bq.parts, q)
	}
}

// recordSize estimates a message's size in a record batch.
func recordSize(m *Outgoing) int {
	n := len(m.Key) + len(m.Value) + 16
	for i := range m.headerCount() {
		h := m.header(i)
		n += len(h.Key) + len(h.Value) + 4
	}
	return n
}

// sendReady sends a request to every broker that is ready for one, and
// returns when the next one will be (zero: nothing waits on time). A pass
// that moved partitions to other queues (leaders found, a request failed
// at once) is followed by another, as the queues it already passed may
// have become ready.
func (l *lane) sendReady(flushing bool) time.Time {
	for {
		next, moved := l.sendPass(flushing)
		if !moved || l.err != nil {
			return next
		}
	}
}

func (l *lane) sendPass(flushing bool) (next time.Time, moved bool) {
	now := time.Now()
	for _, bq := range l.brokers {
		if bq.busy || bq.waiting == 0 {
			continue
		}
		at := bq.holdTil
		if bq.b != nil && !flushing && bq.bytes < l.cfg.flushBytes && (l.cfg.flushMsgs == 0 || bq.waiting < l.cfg.flushMsgs) {
			if t := bq.since.Add(l.cfg.flushEvery); t.After(at) {
				at = t
			}
		}
		if at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		if bq.b == nil {
			if l.relead(bq) {
				moved = true
			}
			if l.err == nil && bq.waiting > 0 && (next.IsZero() || bq.holdTil.Before(next)) {
				next = bq.holdTil
			}
			continue
		}
		l.send(bq)
		if !bq.busy {
			moved = true // failed at once: its partitions were moved or failed
		}
	}
	return next, moved
}

// send builds one request of what bq holds, each partition's batch up to
// max_message_bytes, and hands it to the broker.
func (l *lane) send(bq *brokerQueue) {
	// A failed lane leaves partitions listed with nothing queued.
	parts := bq.parts[:0]
	for _, q := range bq.parts {
		if len(q.queued()) > 0 {
			parts = append(parts, q)
		} else {
			q.listed = false
		}
	}
	clear(bq.parts[len(parts):])
	bq.parts = parts
	// What each partition sends: its oldest messages, up to
	// max_message_bytes.
	bq.sent = bq.sent[:0]
	for _, q := range bq.parts {
		n, size := 0, 0
		for _, it := range q.queued() {
			s := int(it.size)
			if size > 0 && size+s > l.cfg.maxBatch {
				break
			}
			size += s
			n++
		}
		q.head = n
		bq.sent = append(bq.sent, sentPart{q: q, n: n})
	}
	bq.busy = true
	cb := func(resp *sarama.ProduceResponse, err error) {
		select {
		case l.results <- laneResult{q: bq, resp: resp, err: err}:
		case <-l.kill:
		}
	}
	var err error
	if l.cfg.wire {
		err = l.sendWire(bq, cb)
	} else {
		err = l.sendSarama(bq, cb)
	}
	if err != nil {
		l.complete(laneResult{q: bq, err: err})
	}
}

// sendWire sends bq's request over the lane's own connection to its broker.
func (l *lane) sendWire(bq *brokerQueue, cb func(*sarama.ProduceResponse, error)) error {
	if bq.wire != nil && time.Since(bq.wire.used) > wireIdle {
		// Brokers close connections idle for connections.max.idle.ms (10
		// minutes by default); a request written into one that was closed
		// would fail and be retried: dial afresh instead.
		bq.wire.close()
		bq.wire = nil
	}
	if bq.wire == nil {
		c, err := dialWire(l.ctx, bq.b.Addr(), l.cfg)
		if err != nil {
			return fmt.Errorf("kafka dial %s: %w", bq.b.Addr(), err)
		}
		bq.wire = c
	}
	return bq.wire.produce(bq.sent, l.cfg.acks, l.cfg.timeout, cb)
}

// sendSarama sends bq's request through sarama's connection to its broker,
// records and headers built in slabs bq reuses.
func (l *lane) sendSarama(bq *brokerQueue, cb func(*sarama.ProduceResponse, error)) error {
	n, nh := 0, 0
	for _, sp := range bq.sent {
		n += sp.n
		for _, it := range sp.q.queued()[:sp.n] {
			nh += it.m.headerCount()
		}
	}
	// Room for everything up front: records and headers are pointed to
	// while the slabs fill, so they must not move.
	recs, ptrs := grow(bq.records, n), grow(bq.recPtrs, n)
	hdrs, hptrs := grow(bq.headers, nh), grow(bq.hdrPtrs, nh)
	bq.batches = grow(bq.batches, len(bq.sent))[:len(bq.sent)]
	req := &sarama.ProduceRequest{RequiredAcks: l.cfg.acks, Timeout: int32(l.cfg.timeout / time.Millisecond), Version: l.cfg.version}
	now := time.Now()
	for i, sp := range bq.sent {
		first := len(recs)
		for _, it := range sp.q.queued()[:sp.n] {
			r := sarama.Record{Value: it.m.Value, OffsetDelta: int64(len(recs) - first)}
			if len(it.m.Key) > 0 {
				r.Key = it.m.Key
			}
			if it.m.headerCount() > 0 {
				h0 := len(hptrs)
				for i := range it.m.headerCount() {
					x := it.m.header(i)
					hdrs = append(hdrs, sarama.RecordHeader{Key: readOnlyBytes(x.Key), Value: readOnlyBytes(x.Value)})
					hptrs = append(hptrs, &hdrs[len(hdrs)-1])
				}
				r.Headers = hptrs[h0:len(hptrs):len(hptrs)]
			}
			recs = append(recs, r)
			ptrs = append(ptrs, &recs[len(recs)-1])
		}
		b := &bq.batches[i]
		*b = sarama.RecordBatch{
			Version: 2, Codec: l.cfg.codecOf(sp.q.tp.topic), CompressionLevel: l.cfg.level,
			FirstTimestamp: now, MaxTimestamp: now, LastOffsetDelta: int32(sp.n - 1),
			ProducerID: -1, ProducerEpoch: -1, FirstSequence: -1,
			Records: ptrs[first:len(ptrs):len(ptrs)],
		}
		req.AddBatch(sp.q.tp.topic, sp.q.tp.partition, b)
	}
	err := bq.b.AsyncProduce(req, cb)
	// The request is encoded and written by now: the slabs are reused by
	// the next one, cleared so they do not keep the messages alive.
	clear(recs)
	clear(hdrs)
	clear(bq.batches)
	bq.records, bq.recPtrs, bq.headers, bq.hdrPtrs = recs[:0], ptrs[:0], hdrs[:0], hptrs[:0]
	return err
}

// grow returns s emptied, with room for n elements.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, 0, n)
	}
	return s[:0]
}

// complete handles a request's outcome: acks what was written, queues again
// what may be retried, fails the rest.
func (l *lane) complete(r laneResult) {
	bq := r.q
	bq.busy = false
	if r.err != nil && bq.wire != nil {
		// Its reader has stopped: the next request dials again.
		bq.wire.close()
		bq.wire = nil
	}
	var retry []topicPartition
	var why error // of the first partition retried
	for _, sp := range bq.sent {
		q := sp.q
		var err error
		switch {
		case r.err != nil:
			err = r.err
		default:
			block := r.resp.GetBlock(q.tp.topic, q.tp.partition)
			switch {
			case block == nil:
				err = sarama.ErrIncompleteResponse
			case block.Err != sarama.ErrNoError:
				err = block.Err
			}
		}
		sent := q.queued()[:sp.n]
		if err == nil {
			for _, it := range sent {
				it.ack(it.m, nil)
			}
			l.dequeue(q, sp.n)
			continue
		}
		if l.err == nil && retriable(err) && int(sent[0].tries) < l.cfg.retryMax {
			for i := range sent {
				sent[i].tries++
			}
			q.head = 0
			retry = append(retry, q.tp)
			if why == nil {
				why = err
			}
			continue
		}
		q.head = 0 // abandon fails them
		l.fail(fmt.Errorf("kafka produce to %s/%d: %w", q.tp.topic, q.tp.partition, err))
	}
	bq.sent = bq.sent[:0]
	if l.err != nil {
		l.abandon(l.err)
		return
	}
	if len(retry) > 0 {
		if n, ok := l.retries.Allow(); ok {
			l.logger.Warn("kafka produce retried", "partitions", len(retry), "error", why, "retry_backoff", l.cfg.retryBackoff, "suppressed", n)
		}
		l.retry(bq, retry, r.err != nil)
	}
}

// dequeue drops q's first n messages, which were written.
func (l *lane) dequeue(q *partQueue, n int) {
	bq := q.broker
	done := q.queued()[:n]
	for _, it := range done {
		bq.bytes -= int(it.size)
	}
	bq.waiting -= n
	clear(done)
	q.start += n
	q.head = 0
	rest := len(q.items) - q.start
	if rest == 0 {
		q.items, q.start = q.items[:0], 0
	} else if q.start > 4096 && q.start > rest {
		// Moved down now and then, not per request: a queue holds up to
		// max_in_flight messages.
		copy(q.items, q.items[q.start:])
		clear(q.items[rest:])
		q.items, q.start = q.items[:rest], 0
	}
	if rest == 0 {
		q.listed = false
		parts := bq.parts[:0]
		for _, p := range bq.parts {
			if p != q {
				parts = append(parts, p)
			}
		}
		clear(bq.parts[len(parts):])
		bq.parts = parts
	}
	if bq.waiting == 0 {
		bq.bytes = 0
	}
}

// retry refreshes the metadata of the failed partitions and moves each to
// its leader's queue (perhaps another broker's), keeping their messages in
// order, to be sent after retry_backoff.
func (l *lane) retry(bq *brokerQueue, tps []topicPartition, connection bool) {
	if connection && !l.cfg.wire {
		// The connection is broken or answers no more: a fresh one is
		// opened by the next Leader call. (The lane's own connection was
		// closed by complete.)
		_ = bq.b.Close()
	}
	topics := make([]string, 0, len(tps))
	for _, tp := range tps {
		topics = append(topics, tp.topic)
	}
	_ = l.client.RefreshMetadata(topics...)
	now := time.Now()
	for _, tp := range tps {
		q := l.parts[tp]
		to := l.limbo(now)
		if b, err := l.client.Leader(tp.topic, tp.partition); err == nil {
			to = l.brokerQueue(b)
		}
		l.move(q, to, now)
		to.holdTil = now.Add(l.cfg.retryBackoff)
	}
}

// retriable says whether a produce may succeed when sent again.
func retriable(err error) bool {
	var kerr sarama.KError
	if errors.As(err, &kerr) {
		switch kerr {
		case sarama.ErrUnknownTopicOrPartition, sarama.ErrLeaderNotAvailable, sarama.ErrNotLeaderForPartition,
			sarama.ErrRequestTimedOut, sarama.ErrNotEnoughReplicas, sarama.ErrNotEnoughReplicasAfterAppend,
			sarama.ErrKafkaStorageError, sarama.ErrNetworkException:
			return true
		}
		return false
	}
	// Not an answer from the broker: the connection failed or timed out.
	return !errors.Is(err, sarama.ErrIncompleteResponse)
}

// fail marks the lane failed with err (the first failure is kept).
func (l *lane) fail(err error) {
	if l.err == nil {
		l.err = err
	}
}

// abandon fails every message the lane holds that is not in a request in
// flight; those in flight are failed when their answer comes, or now if the
// lane is being killed (their answers are then ignored).
func (l *lane) abandon(err error) {
	l.fail(err)
	killed := false
	select {
	case <-l.kill:
		killed = true
	default:
	}
	for _, bq := range l.brokers {
		if killed && bq.busy {
			for _, sp := range bq.sent {
				sp.q.head = 0
			}
			bq.sent, bq.busy = bq.sent[:0], false
		}
		for _, q := range bq.parts {
			left := q.queued()[q.head:]
			for _, it := range left {
				it.ack(it.m, l.err)
			}
			clear(left)
			q.items = q.items[:q.start+q.head]
		}
		bq.waiting = 0
		for _, q := range bq.parts {
			bq.waiting += len(q.queued())
		}
		if bq.waiting == 0 {
			bq.bytes = 0
		}
	}
	if !killed {
		return
	}
	// What a killed lane still finds in its channel.
	for {
		select {
		case items := <-l.in:
			for _, it := range items {
				it.ack(it.m, l.err)
			}
		default:
			return
		}
	}
}

// idle says nothing waits and nothing is in flight.
func (l *lane) idle() bool {
	for _, bq := range l.brokers {
		if bq.busy || bq.waiting > 0 {
			return false
		}
	}
	return true
}
