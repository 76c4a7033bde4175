package forwarder

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

// KafkaSink produces to Kafka with an idempotent sarama AsyncProducer.
type KafkaSink struct {
	cfg    KafkaConfig
	topics TopicsConfig
	logger *slog.Logger

	client   sarama.Client
	producer sarama.AsyncProducer
	drained  *sync.WaitGroup // per connection: a timed-out Close may still be waiting on the last one
	known    map[string]bool // topics checked to exist
}

var (
	_ Sink   = (*KafkaSink)(nil)
	_ Prober = (*KafkaSink)(nil)
)

// NewKafkaSink returns an unconnected Kafka sink.
func NewKafkaSink(cfg KafkaConfig, topics TopicsConfig, logger *slog.Logger) *KafkaSink {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &KafkaSink{cfg: cfg, topics: topics, logger: logger}
}

// Name implements Sink.
func (k *KafkaSink) Name() string { return "kafka" }

// SaramaConfig builds the producer configuration: idempotent, acks from all
// in-sync replicas, one request in flight per broker so retries keep order.
func SaramaConfig(c KafkaConfig) (*sarama.Config, error) {
	sc := sarama.NewConfig()
	v, err := sarama.ParseKafkaVersion(c.Version)
	if err != nil {
		return nil, fmt.Errorf("kafka version: %w", err)
	}
	sc.Version = v
	sc.ClientID = c.ClientID
	sc.Net.MaxOpenRequests = 1
	sc.Net.DialTimeout = c.DialTimeout
	sc.Metadata.Retry.Max = 1
	sc.Metadata.Retry.Backoff = c.RetryBackoff
	sc.Metadata.Full = false
	// Topics are created deliberately (partitions, replication) or not at all.
	sc.Metadata.AllowAutoTopicCreation = false
	sc.Producer.Idempotent = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Retry.Max = c.RetryMax
	sc.Producer.Retry.Backoff = c.RetryBackoff
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.MaxMessageBytes = c.MaxMessageBytes
	sc.Producer.Flush.Bytes = c.FlushBytes
	sc.Producer.Flush.Messages = c.FlushMessages
	sc.Producer.Flush.Frequency = c.FlushFrequency
	sc.ChannelBufferSize = 16384
	if sc.Producer.Compression, err = compressionCodec(c.Compression); err != nil {
		return nil, fmt.Errorf("kafka compression: %w", err)
	}
	tlsCfg, err := buildTLS(c.TLS)
	if err != nil {
		return nil, fmt.Errorf("kafka tls: %w", err)
	}
	if tlsCfg != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = tlsCfg
	}
	if m := strings.ToUpper(c.SASL.Mechanism); m != "" {
		sc.Net.SASL.Enable = true
		sc.Net.SASL.Handshake = true
		sc.Net.SASL.User = c.SASL.User
		sc.Net.SASL.Password = c.SASL.Password
		sc.Net.SASL.Mechanism = sarama.SASLMechanism(m)
		switch m {
		case sarama.SASLTypeSCRAMSHA256:
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha256.New)} }
		case sarama.SASLTypeSCRAMSHA512:
			sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha512.New)} }
		}
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("kafka config: %w", err)
	}
	return sc, nil
}

// Connect implements Sink.
func (k *KafkaSink) Connect(ctx context.Context) error {
	sc, err := SaramaConfig(k.cfg)
	if err != nil {
		return err
	}
	client, err := newClient(ctx, k.cfg.Brokers, sc)
	if err != nil {
		return err
	}
	k.known = map[string]bool{}
	for _, s := range k.topics.Ensure {
		if err := k.ensureTopic(client, k.topics.Topic(s)); err != nil {
			_ = client.Close()
			return err
		}
	}
	p, err := sarama.NewAsyncProducerFromClient(client)
	if err != nil {
		_ = client.Close()
		return fmt.Errorf("kafka producer: %w: %w", ErrUnavailable, err)
	}
	k.client, k.producer = client, p
	k.start()
	return nil
}

// newClient connects without blocking past ctx (sarama's dial honours only
// its own timeouts).
func newClient(ctx context.Context, brokers []string, sc *sarama.Config) (sarama.Client, error) {
	type res struct {
		c   sarama.Client
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := sarama.NewClient(brokers, sc)
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("kafka connect: %w: %w", ErrUnavailable, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				_ = r.c.Close()
			}
		}()
		return nil, fmt.Errorf("kafka connect: %w", ctx.Err())
	}
}

func (k *KafkaSink) ensureTopic(client sarama.Client, topic string) error {
	if k.known[topic] {
		return nil
	}
	if err := client.RefreshMetadata(topic); err == nil {
		if parts, err := client.Partitions(topic); err == nil && len(parts) > 0 {
			k.known[topic] = true
			return nil
		}
	} else if !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return fmt.Errorf("kafka metadata for %s: %w: %w", topic, ErrUnavailable, err)
	}
	if !k.cfg.CreateTopics {
		return fmt.Errorf("kafka topic %s: %w (forwarder.kafka.create_topics is false)", topic, ErrMissingTopic)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka admin: %w: %w", ErrUnavailable, err)
	}
	// Not admin.Close(): it would close the shared client.
	err = admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: k.cfg.Partitions, ReplicationFactor: k.cfg.ReplicationFactor}, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		var te *sarama.TopicError
		if !errors.As(err, &te) || !errors.Is(te.Err, sarama.ErrTopicAlreadyExists) {
			return fmt.Errorf("create kafka topic %s: %w", topic, err)
		}
	}
	k.logger.Info("created kafka topic", "topic", topic, "partitions", k.cfg.Partitions, "replication_factor", k.cfg.ReplicationFactor)
	k.known[topic] = true
	return nil
}

// Write implements Sink.
func (k *KafkaSink) Write(ctx context.Context, batch []*Outgoing, ack AckFunc) error {
	if k.producer == nil {
		for _, m := range batch {
			ack(m, ErrNotConnected)
		}
		return ErrNotConnected
	}
	for i, m := range batch {
		topic := k.topics.Topic(m.Stream)
		if !k.known[topic] {
			if err := k.ensureTopic(k.client, topic); err != nil {
				for _, r := range batch[i:] {
					ack(r, err)
				}
				return err
			}
		}
		pm := &sarama.ProducerMessage{
			Topic:    topic,
			Value:    sarama.ByteEncoder(m.Value),
			Metadata: ackRef{m: m, ack: ack},
			Headers:  make([]sarama.RecordHeader, len(m.Headers)),
		}
		if len(m.Key) > 0 {
			pm.Key = sarama.ByteEncoder(m.Key)
		}
		for j, h := range m.Headers {
			pm.Headers[j] = sarama.RecordHeader{Key: []byte(h.Key), Value: []byte(h.Value)}
		}
		select {
		case k.producer.Input() <- pm:
		case <-ctx.Done():
			for _, r := range batch[i:] {
				ack(r, ctx.Err())
			}
			return ctx.Err()
		}
	}
	return nil
}

// ackRef travels in ProducerMessage.Metadata; it carries the spool seq (in m).
type ackRef struct {
	m   *Outgoing
	ack AckFunc
}

// start reports the producer's outcomes as acks until the producer closes.
func (k *KafkaSink) start() {
	p := k.producer
	wg := &sync.WaitGroup{}
	k.drained = wg
	wg.Add(2)
	go func() {
		defer wg.Done()
		for pm := range p.Successes() {
			r := pm.Metadata.(ackRef)
			r.ack(r.m, nil)
		}
	}()
	go func() {
		defer wg.Done()
		for pe := range p.Errors() {
			r := pe.Msg.Metadata.(ackRef)
			r.ack(r.m, fmt.Errorf("kafka produce: %w", pe.Err))
		}
	}()
}

// Close implements Sink: flushes, then waits for every ack up to ctx's deadline.
func (k *KafkaSink) Close(ctx context.Context) error {
	if k.producer == nil {
		return nil
	}
	p, c, wg := k.producer, k.client, k.drained
	k.producer, k.client = nil, nil
	p.AsyncClose()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		_ = c.Close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kafka close: %w", ctx.Err())
	}
}

// Probe implements Prober: Kafka is healthy when metadata for the ensured
// topics can be fetched.
func (k *KafkaSink) Probe(ctx context.Context) error {
	sc, err := SaramaConfig(k.cfg)
	if err != nil {
		return err
	}
	c, err := newClient(ctx, k.cfg.Brokers, sc)
	if err != nil {
		return err
	}
	defer c.Close()
	var topics []string
	for _, s := range k.topics.Ensure {
		topics = append(topics, k.topics.Topic(s))
	}
	if err := c.RefreshMetadata(topics...); err != nil {
		return fmt.Errorf("kafka probe: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// scramClient adapts xdg-go/scram to sarama.SCRAMClient.
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (s *scramClient) Begin(user, password, authzID string) error {
	c, err := s.hash.NewClient(user, password, authzID)
	if err != nil {
		return fmt.Errorf("scram: %w", err)
	}
	s.conv = c.NewConversation()
	return nil
}

func (s *scramClient) Step(challenge string) (string, error) {
	r, err := s.conv.Step(challenge)
	if err != nil {
		return "", fmt.Errorf("scram step: %w", err)
	}
	return r, nil
}

func (s *scramClient) Done() bool { return s.conv.Done() }
