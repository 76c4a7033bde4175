package testenv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// ConsumeEach reads every partition of topic from its oldest offset up to
// the high-water mark it has when the call starts, hands each message to fn,
// and returns how many messages it read. It is the read-back for a topic
// whose producers have finished: nothing written before the call is missed,
// and every copy of a duplicated message is seen. fn is never called
// concurrently; per partition, messages come in offset order. The test fails
// if reading takes longer than timeout. The topic must be non-transactional
// (no control records), so the last offset below the mark is a message.
func ConsumeEach(t testing.TB, brokers []string, topic string, timeout time.Duration, fn func(*sarama.ConsumerMessage)) int {
	t.Helper()
	client, err := sarama.NewClient(brokers, consumerConfig(t))
	if err != nil {
		t.Fatalf("kafka client on %v: %v", brokers, err)
	}
	defer client.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	ends := make(map[int32]int64, len(parts))
	for _, p := range parts {
		hwm, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatalf("high-water mark of %s/%d: %v", topic, p, err)
		}
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatalf("oldest offset of %s/%d: %v", topic, p, err)
		}
		if hwm > oldest {
			ends[p] = hwm
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r := newReadBack(t, client, fn)
	r.start(ctx, topic, ends)
	if r.startErr != nil {
		cancel()
	}
	if err := r.wait(); err != nil {
		t.Fatalf("consume %s: %v", topic, err)
	}
	return int(r.n.Load())
}

// ConsumeFollow hands fn every message of the topics, from the oldest offset
// of each partition, as it arrives, until the test ends; for tests that poll
// (Eventually) for what producers are still writing. The topics must exist.
// fn is never called concurrently. Consumer errors (a broker restarting
// under an outage test) are retried by sarama and summarised in the log.
func ConsumeFollow(t testing.TB, brokers []string, fn func(*sarama.ConsumerMessage), topics ...string) {
	t.Helper()
	client, err := sarama.NewClient(brokers, consumerConfig(t))
	if err != nil {
		t.Fatalf("kafka client on %v: %v", brokers, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := newReadBack(t, client, fn)
	t.Cleanup(func() {
		cancel()
		_ = r.wait()
		_ = client.Close()
	})
	for _, topic := range topics {
		parts, err := client.Partitions(topic)
		if err != nil {
			t.Fatalf("partitions of %s: %v", topic, err)
		}
		ends := make(map[int32]int64, len(parts))
		for _, p := range parts {
			ends[p] = -1 // no end: follow
		}
		r.start(ctx, topic, ends)
	}
	if r.startErr != nil {
		t.Fatal(r.startErr)
	}
}

func consumerConfig(t testing.TB) *sarama.Config {
	cfg := SaramaConfig(t)
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.Fetch.Default = 4 << 20
	cfg.ChannelBufferSize = 1024
	return cfg
}

// readBack is the read-back loop behind ConsumeEach and ConsumeFollow: one
// goroutine per partition, reading from the oldest offset up to an end
// offset (-1: until ctx ends), calling fn under one lock.
type readBack struct {
	t        testing.TB
	client   sarama.Client
	consumer sarama.Consumer
	startErr error
	fnMu     sync.Mutex
	fn       func(*sarama.ConsumerMessage)
	n        atomic.Int64
	wg       sync.WaitGroup

	mu      sync.Mutex
	errs    map[string]int
	lastErr map[string]error
	short   []string // partitions that did not reach their end offset
}

func newReadBack(t testing.TB, client sarama.Client, fn func(*sarama.ConsumerMessage)) *readBack {
	r := &readBack{t: t, client: client, fn: fn, errs: map[string]int{}, lastErr: map[string]error{}}
	r.consumer, r.startErr = sarama.NewConsumerFromClient(client)
	return r
}

func (r *readBack) start(ctx context.Context, topic string, ends map[int32]int64) {
	if r.startErr != nil {
		return
	}
	for p, end := range ends {
		name := fmt.Sprintf("%s/%d", topic, p)
		pc, err := consumeOldest(ctx, r.client, r.consumer, topic, p, func(err error) {
			r.mu.Lock()
			r.errs[name]++
			r.lastErr[name] = err
			r.mu.Unlock()
		})
		if err != nil {
			r.startErr = fmt.Errorf("consume %s/%d: %w", topic, p, err)
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer pc.AsyncClose()
			next := int64(-1)
			for end < 0 || next < end {
				select {
				case m := <-pc.Messages():
					r.fnMu.Lock()
					r.fn(m)
					r.fnMu.Unlock()
					r.n.Add(1)
					next = m.Offset + 1
				case e := <-pc.Errors():
					if e != nil {
						r.mu.Lock()
						r.errs[name]++
						r.lastErr[name] = e
						r.mu.Unlock()
					}
				case <-ctx.Done():
					if end >= 0 {
						r.mu.Lock()
						r.short = append(r.short, fmt.Sprintf("%s at offset %d of %d", name, next, end))
						r.mu.Unlock()
					}
					return
				}
			}
		}()
	}
}

// startRetryFor bounds how long a partition may stay without a usable
// leader when a read-back starts.
const startRetryFor = 30 * time.Second

// consumeOldest starts reading a partition from its oldest offset. A topic
// the agent has just created can be listed before the broker has settled
// its partitions' leaders; the errors that say so are retried with fresh
// metadata for at most startRetryFor, each passed to retried.
func consumeOldest(ctx context.Context, client sarama.Client, consumer sarama.Consumer, topic string, p int32, retried func(error)) (sarama.PartitionConsumer, error) {
	deadline := time.Now().Add(startRetryFor)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err == nil || !leaderSettling(err) || time.Now().After(deadline) {
			return pc, err
		}
		retried(err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		_ = client.RefreshMetadata(topic)
	}
}

// leaderSettling tells the errors a broker answers while a new topic's
// partitions are still getting their leaders.
func leaderSettling(err error) bool {
	return errors.Is(err, sarama.ErrNotLeaderForPartition) ||
		errors.Is(err, sarama.ErrLeaderNotAvailable) ||
		errors.Is(err, sarama.ErrUnknownTopicOrPartition) ||
		errors.Is(err, sarama.ErrOffsetsLoadInProgress)
}

// wait waits for the partition loops to end (at their end offsets, or when
// their context ends), logs consumer errors and reports partitions that were
// not read to their end.
func (r *readBack) wait() error {
	r.wg.Wait()
	if r.consumer != nil {
		_ = r.consumer.Close()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, n := range r.errs {
		r.t.Logf("consume %s: %d consumer errors, last: %v", name, n, r.lastErr[name])
	}
	if r.startErr != nil {
		return r.startErr
	}
	if len(r.short) > 0 {
		return fmt.Errorf("%d messages read; not read to the end in time: %v", r.n.Load(), r.short)
	}
	return nil
}
