package forwarder

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// BridgeOptions configures a Bridge.
type BridgeOptions struct {
	// Config supplies the kafka, nats and topics sections (the same as the
	// forwarder's, so topic names match).
	Config Config
	// Durable names the JetStream durable consumer; a restarted bridge
	// continues where it stopped.
	Durable string
	// Batch is how many messages are fetched at once.
	Batch      int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Bridge moves what the forwarder wrote to JetStream into Kafka, with the same
// ids and headers, acknowledging JetStream only after Kafka acknowledged.
type Bridge struct {
	opts    BridgeOptions
	logger  *slog.Logger
	moved   prometheus.Counter
	errs    prometheus.Counter
	skipped prometheus.Counter
	count   atomic.Uint64
}

// NewBridge checks opts; it connects nothing until Run.
func NewBridge(opts BridgeOptions) (*Bridge, error) {
	if opts.Durable == "" {
		opts.Durable = "bgpedge-bridge"
	}
	if opts.Batch <= 0 {
		opts.Batch = 1000
	}
	if opts.Config.AgentID == "" {
		opts.Config.AgentID = "bridge" // only used in the client name
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	// The bridge reads JetStream and writes Kafka whatever the forwarder's
	// list of sinks.
	if err := opts.Config.ValidateSinks(SinkKafka, SinkNATS); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Bridge{
		opts:   opts,
		logger: opts.Logger.With("component", "bridge"),
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bridge_messages_total",
			Help: "Messages moved from JetStream to Kafka (acknowledged by both).",
		}),
		errs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bridge_errors_total",
			Help: "Bridge sessions that ended on a Kafka or NATS error.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bridge_skipped_messages_total",
			Help: "JetStream messages not bridgeable (subject or headers not bgpedge's), terminated and left in the stream for an operator.",
		}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{b.moved, b.errs, b.skipped} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("bridge metrics: %w", err)
			}
		}
	}
	return b, nil
}

// Moved is how many messages the bridge has moved so far.
func (b *Bridge) Moved() uint64 { return b.count.Load() }

// Run bridges until ctx is done, reconnecting with backoff on failures.
func (b *Bridge) Run(ctx context.Context) error {
	bo := backoff{min: b.opts.Config.BackoffMin, max: b.opts.Config.BackoffMax}
	for ctx.Err() == nil {
		progressed, err := b.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		b.errs.Inc()
		if progressed {
			bo.reset()
		}
		b.logger.Warn("bridge session ended, retrying", "err", err)
		if !bo.sleep(ctx) {
			return nil
		}
	}
	return nil
}

// Pending is how many messages of the stream the bridge has not yet moved
// (not delivered, or delivered and not acknowledged).
func (b *Bridge) Pending(ctx context.Context) (uint64, error) {
	nc, js, err := b.connect(ctx)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	c, err := js.Consumer(ctx, b.opts.Config.NATS.Stream, b.opts.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		s, err := js.Stream(ctx, b.opts.Config.NATS.Stream)
		if err != nil {
			return 0, fmt.Errorf("stream info: %w", err)
		}
		return s.CachedInfo().State.Msgs, nil
	}
	if err != nil {
		return 0, fmt.Errorf("consumer info: %w", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer info: %w", err)
	}
	return info.NumPending + uint64(info.NumAckPending), nil
}

func (b *Bridge) connect(ctx context.Context) (*nats.Conn, jetstream.JetStream, error) {
	opts, err := NATSOptions(b.opts.Config.NATS, "bgpedge-bridge")
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(b.opts.Config.NATS.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("nats connect: %w: %w", ErrUnavailable, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

func (b *Bridge) session(ctx context.Context) (progressed bool, err error) {
	cfg := b.opts.Config
	nc, js, err := b.connect(ctx)
	if err != nil {
		return false, err
	}
	defer nc.Close()
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.NATS.Stream, jetstream.ConsumerConfig{
		Durable:       b.opts.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 4 * b.opts.Batch,
		FilterSubject: cfg.NATS.SubjectPrefix + ".>",
	})
	if err != nil {
		return false, fmt.Errorf("jetstream consumer %s: %w", b.opts.Durable, err)
	}
	sink := NewKafkaSink(cfg.Kafka, cfg.Topics, b.logger)
	if err := sink.Connect(ctx); err != nil {
		return false, err
	}
	failed := make(chan error, 1)
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		if cerr := sink.Close(cctx); cerr != nil && err == nil {
			err = cerr
		}
	}()
	for {
		select {
		case err := <-failed:
			return progressed, err
		default:
		}
		fetch, err := cons.Fetch(b.opts.Batch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() != nil {
				return progressed, nil
			}
			return progressed, fmt.Errorf("jetstream fetch: %w", err)
		}
		var batch []*Outgoing
		msgs := map[*Outgoing]jetstream.Msg{}
		for msg := range fetch.Messages() {
			out, err := b.outgoing(msg)
			if err != nil {
				// Not ours (or damaged): leave it to an operator, never loop on it.
				b.skipped.Inc()
				b.logger.Warn("jetstream message not bridgeable, terminated", "subject", msg.Subject(), "err", err)
				_ = msg.Term()
				continue
			}
			batch = append(batch, out)
			msgs[out] = msg
		}
		if err := fetch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			return progressed, fmt.Errorf("jetstream fetch: %w", err)
		}
		if len(batch) == 0 {
			if ctx.Err() != nil {
				return progressed, nil
			}
			continue
		}
		// msgs is complete before Write: the ack callbacks only read it.
		werr := sink.Write(ctx, batch, func(m *Outgoing, err error) {
			msg := msgs[m]
			if err != nil {
				_ = msg.NakWithDelay(time.Second)
				select {
				case failed <- err:
				default:
				}
				return
			}
			if msg.Ack() == nil {
				b.moved.Inc()
				b.count.Add(1)
			}
		})
		if werr != nil {
			return progressed, werr
		}
		progressed = true
	}
}

// outgoing rebuilds the forwarder's message from a JetStream message.
func (b *Bridge) outgoing(msg jetstream.Msg) (*Outgoing, error) {
	cfg := b.opts.Config
	stream, ok := cfg.NATS.StreamOfSubject(msg.Subject())
	if !ok {
		return nil, fmt.Errorf("subject %q is not %s.<agent>.<stream>", msg.Subject(), cfg.NATS.SubjectPrefix)
	}
	h := msg.Headers()
	out := &Outgoing{ID: h.Get(HeaderID), Stream: stream, Value: msg.Data()}
	if h.Get(HeaderTombstone) != "" {
		out.Value = nil // back to a Kafka tombstone
	}
	if out.ID == "" {
		out.ID = h.Get(jetstream.MsgIDHeader)
	}
	if k := h.Get(HeaderKey); k != "" {
		key, err := base64.StdEncoding.DecodeString(k)
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", HeaderKey, err)
		}
		out.Key = key
	}
	for name, vals := range h {
		if name == HeaderKey || name == HeaderTombstone || name == jetstream.MsgIDHeader || strings.HasPrefix(name, "Nats-") {
			continue
		}
		for _, v := range vals {
			out.Headers = append(out.Headers, Header{Key: name, Value: v})
		}
	}
	return out, nil
}
