package testenv

import (
	"context"
	"errors"
	"testing"

	"github.com/IBM/sarama"
)

// settlingConsumer answers ConsumePartition with the given errors first, as
// a broker does while a new topic's partitions get their leaders.
type settlingConsumer struct {
	sarama.Consumer
	errs  []error
	calls int
}

func (c *settlingConsumer) ConsumePartition(string, int32, int64) (sarama.PartitionConsumer, error) {
	c.calls++
	if len(c.errs) > 0 {
		err := c.errs[0]
		c.errs = c.errs[1:]
		return nil, err
	}
	return nil, nil
}

type refreshCounter struct {
	sarama.Client
	refreshed int
}

func (c *refreshCounter) RefreshMetadata(...string) error { c.refreshed++; return nil }

func TestConsumeOldestRetriesWhileLeadersSettle(t *testing.T) {
	ctx := context.Background()
	client := &refreshCounter{}
	c := &settlingConsumer{errs: []error{sarama.ErrNotLeaderForPartition, sarama.ErrLeaderNotAvailable}}
	var retried []error
	if _, err := consumeOldest(ctx, client, c, "t", 0, func(err error) { retried = append(retried, err) }); err != nil {
		t.Fatalf("settling leaders: %v", err)
	}
	if c.calls != 3 || len(retried) != 2 || client.refreshed != 2 {
		t.Fatalf("calls %d, retried %v, metadata refreshed %d times; want 3, two errors, 2", c.calls, retried, client.refreshed)
	}

	// Any other error ends the start at once.
	c = &settlingConsumer{errs: []error{sarama.ErrOffsetOutOfRange}}
	if _, err := consumeOldest(ctx, client, c, "t", 0, func(error) { t.Fatal("retried a final error") }); !errors.Is(err, sarama.ErrOffsetOutOfRange) {
		t.Fatalf("final error: %v", err)
	}

	// A cancelled read-back stops retrying.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	c = &settlingConsumer{errs: []error{sarama.ErrNotLeaderForPartition, sarama.ErrNotLeaderForPartition}}
	if _, err := consumeOldest(cctx, client, c, "t", 0, func(error) {}); !errors.Is(err, sarama.ErrNotLeaderForPartition) || c.calls != 1 {
		t.Fatalf("cancelled: %v after %d calls", err, c.calls)
	}
}
