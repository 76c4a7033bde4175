package forwarder

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSSink publishes to a JetStream stream with asynchronous, acknowledged
// publishes and Nats-Msg-Id set to the message id, so the stream drops
// duplicates within its duplicate window.
type NATSSink struct {
	cfg    NATSConfig
	agent  string
	logger *slog.Logger

	nc      *nats.Conn
	js      jetstream.JetStream
	pending chan pendingPub
	done    chan struct{}
}

type pendingPub struct {
	fut jetstream.PubAckFuture
	m   *Outgoing
	ack AckFunc
}

var (
	_ Sink     = (*NATSSink)(nil)
	_ Prober   = (*NATSSink)(nil)
	_ Timeouts = (*NATSSink)(nil)
)

// NewNATSSink returns an unconnected JetStream sink.
func NewNATSSink(cfg NATSConfig, agentID string, logger *slog.Logger) *NATSSink {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &NATSSink{cfg: cfg, agent: agentID, logger: logger}
}

// Name implements Sink.
func (n *NATSSink) Name() string { return "nats" }

// natsDialTimeout bounds the connection to the server (nats.Timeout).
const natsDialTimeout = 5 * time.Second

// ConnectTimeout implements Timeouts: the dial, then the stream check (or
// creation), bounded by nats.ack_timeout.
func (n *NATSSink) ConnectTimeout() time.Duration { return natsDialTimeout + n.cfg.AckTimeout }

// ProbeTimeout implements Timeouts: a probe does what a connect does.
func (n *NATSSink) ProbeTimeout() time.Duration { return natsDialTimeout + n.cfg.AckTimeout }

// NATSOptions are the connection options for cfg: auth, TLS, and no
// background reconnects (the forwarder reconnects itself, with backoff).
func NATSOptions(cfg NATSConfig, name string) ([]nats.Option, error) {
	opts, err := cfg.Options(name)
	if err != nil {
		return nil, err
	}
	return append(opts, nats.Timeout(natsDialTimeout), nats.NoReconnect()), nil
}

// EnsureStream checks that cfg.Stream exists, creating it (file storage,
// subjects <subject_prefix>.>) when allowed.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg NATSConfig) error {
	_, err := js.Stream(ctx, cfg.Stream)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("nats stream %s: %w: %w", cfg.Stream, ErrUnavailable, err)
	}
	if !cfg.CreateStream {
		return fmt.Errorf("nats stream %s: %w (forwarder.nats.create_stream is false)", cfg.Stream, ErrMissingTopic)
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     cfg.Stream,
		Subjects: []string{cfg.SubjectPrefix + ".>"},
		Storage:  jetstream.FileStorage,
		Replicas: cfg.Replicas,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create nats stream %s: %w", cfg.Stream, err)
	}
	return nil
}

// dial connects and makes sure the stream exists, as Connect and Probe both need.
func (n *NATSSink) dial(ctx context.Context, name string, jsOpts ...jetstream.JetStreamOpt) (*nats.Conn, jetstream.JetStream, error) {
	opts, err := NATSOptions(n.cfg, name)
	if err != nil {
		return nil, nil, err
	}
	nc, err := within(ctx, func() (*nats.Conn, error) { return nats.Connect(n.cfg.URL, opts...) }, (*nats.Conn).Close)
	switch {
	case ctx.Err() != nil && err != nil:
		return nil, nil, fmt.Errorf("nats connect: %w", err)
	case err != nil:
		return nil, nil, fmt.Errorf("nats connect: %w: %w", ErrUnavailable, err)
	}
	js, err := jetstream.New(nc, jsOpts...)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, n.cfg.AckTimeout)
	defer cancel()
	if err := EnsureStream(cctx, js, n.cfg); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// Connect implements Sink.
func (n *NATSSink) Connect(ctx context.Context) error {
	nc, js, err := n.dial(ctx, "bgpedge-forwarder-"+n.agent,
		jetstream.WithPublishAsyncMaxPending(n.cfg.MaxPending),
		jetstream.WithPublishAsyncTimeout(n.cfg.AckTimeout))
	if err != nil {
		return err
	}
	n.nc, n.js = nc, js
	n.pending = make(chan pendingPub, n.cfg.MaxPending)
	n.done = make(chan struct{})
	go n.collect(n.pending, n.done)
	return nil
}

// Probe implements Prober: JetStream is healthy when a new connection
// reaches the server and finds (or creates) the stream, as Connect would.
func (n *NATSSink) Probe(ctx context.Context) error {
	nc, _, err := n.dial(ctx, "bgpedge-probe-"+n.agent)
	if err != nil {
		return fmt.Errorf("nats probe: %w", err)
	}
	nc.Close()
	return nil
}

// MaxPayload implements PayloadLimiter: the server's max_payload, 0 while
// not connected.
func (n *NATSSink) MaxPayload() int {
	if n.nc == nil {
		return 0
	}
	return int(n.nc.MaxPayload())
}

var _ PayloadLimiter = (*NATSSink)(nil)

// collect waits for each publish's ack in publish order; JetStream answers
// roughly in order, so waiting on the oldest first costs nothing.
func (n *NATSSink) collect(pending <-chan pendingPub, done chan<- struct{}) {
	defer close(done)
	for p := range pending {
		select {
		case <-p.fut.Ok():
			p.ack(p.m, nil)
		case err := <-p.fut.Err():
			p.ack(p.m, fmt.Errorf("nats publish: %w", err))
		}
	}
}

// Write implements Sink.
func (n *NATSSink) Write(ctx context.Context, batch []*Outgoing, ack AckFunc) error {
	if n.js == nil {
		for _, m := range batch {
			ack(m, ErrNotConnected)
		}
		return ErrNotConnected
	}
	for i, m := range batch {
		msg := &nats.Msg{Subject: n.cfg.Subject(n.agent, m.Stream), Data: m.Value, Header: nats.Header{}}
		for i := range m.headerCount() {
			h := m.header(i)
			msg.Header.Set(h.Key, h.Value)
		}
		if len(m.Key) > 0 {
			msg.Header.Set(HeaderKey, base64.StdEncoding.EncodeToString(m.Key))
		}
		if m.Value == nil {
			msg.Header.Set(HeaderTombstone, "1")
		}
		fut, err := n.js.PublishMsgAsync(msg, jetstream.WithMsgID(m.ID), jetstream.WithStallWait(n.cfg.AckTimeout))
		if err == nil {
			select {
			case n.pending <- pendingPub{fut: fut, m: m, ack: ack}:
				continue
			case <-ctx.Done():
				// The future is lost with its ack: report the message failed;
				// a duplicate is harmless, a gap is not.
				err = ctx.Err()
			}
		}
		for _, r := range batch[i:] {
			ack(r, fmt.Errorf("nats publish: %w: %w", ErrUnavailable, err))
		}
		return err
	}
	return nil
}

// Close implements Sink: waits for the outstanding acks up to ctx's
// deadline, then disconnects.
func (n *NATSSink) Close(ctx context.Context) error {
	if n.nc == nil {
		return nil
	}
	nc, pending, done := n.nc, n.pending, n.done
	n.nc, n.js, n.pending = nil, nil, nil
	close(pending)
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("nats close: %w", ctx.Err())
	}
	nc.Close()
	// After the deadline the remaining futures fail (connection closed or
	// publish timeout); waiting keeps the promise that every message is
	// reported by the time Close returns.
	<-done
	return err
}
