package forwarder

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

// KafkaSink produces to Kafka through forwarder.kafka.producers lanes
// (kafka_lane.go), each owning a fixed share of the partitions.
type KafkaSink struct {
	cfg    KafkaConfig
	topics TopicsConfig
	logger *slog.Logger

	client sarama.Client   // the first lane's: metadata and topics
	lanes  []*lane         // nil while disconnected
	known  map[string]bool // topics checked to exist
	// streamTopics caches stream → topic and partition count for Write
	// (one goroutine at a time), forgotten every routeTTL so partitions
	// added to a topic are used.
	streamTopics map[string]route
	routesAt     time.Time
	// next spreads messages without a key over the partitions.
	next uint32
	// compact holds the topics of streams declared Compact: created with
	// cleanup.policy=compact.
	compact map[string]bool
	// perLane holds Write's messages per lane (reused).
	perLane [][]laneItem
	// spent: slices the lanes are done with, for perLane.
	spent chan []laneItem
}

var (
	_ Sink     = (*KafkaSink)(nil)
	_ Prober   = (*KafkaSink)(nil)
	_ Timeouts = (*KafkaSink)(nil)
)

// NewKafkaSink returns an unconnected Kafka sink.
func NewKafkaSink(cfg KafkaConfig, topics TopicsConfig, logger *slog.Logger) *KafkaSink {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	compact := make(map[string]bool)
	for _, st := range topics.Streams {
		if st.Compact {
			compact[topics.Topic(st.Name)] = true
		}
	}
	return &KafkaSink{cfg: cfg, topics: topics, logger: logger, compact: compact}
}

// Name implements Sink.
func (k *KafkaSink) Name() string { return "kafka" }

// ConnectTimeout implements Timeouts: a connect dials a broker, checks (or
// creates) the topics and dials each producer's connection, each step
// bounded by kafka.dial_timeout.
func (k *KafkaSink) ConnectTimeout() time.Duration { return 3 * k.cfg.DialTimeout }

// ProbeTimeout implements Timeouts: a dial and one metadata request.
func (k *KafkaSink) ProbeTimeout() time.Duration { return 2 * k.cfg.DialTimeout }

// SaramaConfig builds the sarama configuration of the sink's clients
// (metadata, topics, the broker connections of the lanes that go through
// sarama) and of the acks, timeouts and compression the lanes take from it.
// Its producer settings are those of an idempotent AsyncProducer, which
// BenchmarkSaramaFloor measures the lanes against.
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
	tlsCfg, err := c.TLS.Build()
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
	lc, err := laneConfigOf(k.cfg, sc, k.compact)
	if err != nil {
		return err
	}
	client, err := newClient(ctx, k.cfg.Brokers, sc)
	if err != nil {
		return err
	}
	k.known, k.streamTopics = map[string]bool{}, nil
	ensure := make([]string, 0, len(k.topics.Ensure))
	for _, s := range k.topics.Ensure {
		ensure = append(ensure, k.topics.Topic(s))
	}
	if err := k.ensureTopics(ctx, client, ensure); err != nil {
		_ = client.Close()
		return err
	}
	lanes, err := k.openLanes(ctx, client, sc, lc)
	if err != nil {
		_ = client.Close()
		return err
	}
	k.client, k.lanes = client, lanes
	k.perLane = make([][]laneItem, len(lanes))
	k.spent = make(chan []laneItem, 4*len(lanes))
	for _, l := range lanes {
		l.spent = k.spent
		go l.run()
	}
	return nil
}

// openLanes starts forwarder.kafka.producers lanes, the first on client.
func (k *KafkaSink) openLanes(ctx context.Context, client sarama.Client, sc *sarama.Config, lc laneConfig) ([]*lane, error) {
	lanes := []*lane{newLane(client, lc, k.logger)}
	for range max(k.cfg.Producers, 1) - 1 {
		c, err := newClient(ctx, k.cfg.Brokers, sc)
		if err != nil {
			for _, l := range lanes[1:] {
				_ = l.client.Close()
			}
			return nil, fmt.Errorf("kafka producer: %w", err)
		}
		lanes = append(lanes, newLane(c, lc, k.logger))
	}
	return lanes, nil
}

// newClient connects without blocking past ctx (sarama's dial honours only
// its own timeouts).
func newClient(ctx context.Context, brokers []string, sc *sarama.Config) (sarama.Client, error) {
	c, err := within(ctx, func() (sarama.Client, error) { return sarama.NewClient(brokers, sc) },
		func(c sarama.Client) { _ = c.Close() })
	switch {
	case ctx.Err() != nil && err != nil:
		return nil, fmt.Errorf("kafka connect: %w", err)
	case err != nil:
		return nil, fmt.Errorf("kafka connect: %w: %w", ErrUnavailable, err)
	}
	return c, nil
}

// ensureTopics checks that topics exist, creating the missing ones
// (forwarder.kafka.create_topics) and waiting until their partitions have
// leaders. One metadata refresh asks for all of them: it retries topics it
// does not know after retry_backoff, which per topic made a first start
// with some 16 topics to create take seconds.
func (k *KafkaSink) ensureTopics(ctx context.Context, client sarama.Client, topics []string) error {
	var ask []string
	for _, t := range topics {
		if !k.known[t] && !slices.Contains(ask, t) {
			ask = append(ask, t)
		}
	}
	if len(ask) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, k.ConnectTimeout())
	defer cancel()
	// One refresh for all: it waits retry_backoff once if some are unknown.
	if err := client.RefreshMetadata(ask...); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return fmt.Errorf("kafka metadata for %s: %w: %w", strings.Join(ask, ", "), ErrUnavailable, explainRefusal(k.cfg, err))
	}
	// What the refresh learnt (Partitions of a topic it does not know
	// would refresh again, and wait retry_backoff).
	cached, err := client.Topics()
	if err != nil {
		return fmt.Errorf("kafka metadata: %w: %w", ErrUnavailable, err)
	}
	var missing []string
	for _, t := range ask {
		if !slices.Contains(cached, t) {
			missing = append(missing, t)
		} else if parts, err := client.Partitions(t); err == nil && len(parts) > 0 {
			k.known[t] = true
		} else {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if !k.cfg.CreateTopics {
		return fmt.Errorf("kafka topic %s: %w (forwarder.kafka.create_topics is false)", missing[0], ErrMissingTopic)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka admin: %w: %w", ErrUnavailable, err)
	}
	// Not admin.Close(): it would close the shared client.
	for _, topic := range missing {
		detail := &sarama.TopicDetail{NumPartitions: k.cfg.Partitions, ReplicationFactor: k.cfg.ReplicationFactor}
		if k.compact[topic] {
			// The route state's stream: the latest value per key, tombstones
			// removing keys, is what a consumer bootstraps from.
			compact := "compact"
			detail.ConfigEntries = map[string]*string{"cleanup.policy": &compact}
		}
		err := admin.CreateTopic(topic, detail, false)
		if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			var te *sarama.TopicError
			if !errors.As(err, &te) || !errors.Is(te.Err, sarama.ErrTopicAlreadyExists) {
				return fmt.Errorf("create kafka topic %s: %w", topic, err)
			}
		}
		k.logger.Info("created kafka topic", "topic", topic, "partitions", k.cfg.Partitions, "replication_factor", k.cfg.ReplicationFactor)
	}
	// New partitions get leaders a moment after the creation returns; the
	// lanes need them, and the client's refresh would wait retry_backoff
	// per try.
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		metas, err := admin.DescribeTopics(missing)
		if err == nil && allLed(metas) {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("kafka topics %s: no partition leaders yet: %w: %w", strings.Join(missing, ", "), ErrUnavailable, ctx.Err())
		case <-t.C:
		}
	}
	if err := client.RefreshMetadata(missing...); err != nil {
		return fmt.Errorf("kafka metadata for %s: %w: %w", strings.Join(missing, ", "), ErrUnavailable, explainRefusal(k.cfg, err))
	}
	for _, t := range missing {
		k.known[t] = true
	}
	return nil
}

// allLed reports that every topic exists and every partition has a leader.
func allLed(metas []*sarama.TopicMetadata) bool {
	for _, m := range metas {
		if m.Err != sarama.ErrNoError || len(m.Partitions) == 0 {
			return false
		}
		for _, p := range m.Partitions {
			if p.Err != sarama.ErrNoError || p.Leader < 0 {
				return false
			}
		}
	}
	return true
}

// Write implements Sink: it picks each message's partition (sarama's
// default hash of the key, so keys land where they always did) and hands
// each lane its share in one piece.
func (k *KafkaSink) Write(ctx context.Context, batch []*Outgoing, ack AckFunc) error {
	if k.lanes == nil {
		for _, m := range batch {
			ack(m, ErrNotConnected)
		}
		return ErrNotConnected
	}
	per := k.perLane
	var stream string
	var rt route
	for i, m := range batch {
		if rt.topic == "" || m.Stream != stream {
			r, err := k.topicOf(m.Stream)
			if err != nil {
				for _, r := range batch[i:] {
					ack(r, err)
				}
				k.handOver(ctx, per)
				return err
			}
			stream, rt = m.Stream, r
		}
		var p int32
		switch {
		case m.hashed:
			p = partitionOf(m.keyHash, rt.partitions)
		case len(m.Key) > 0:
			p = hashPartition(m.Key, rt.partitions)
		default:
			p = int32(k.next % uint32(rt.partitions))
			k.next++
		}
		n := int(p) % len(per)
		if per[n] == nil {
			select {
			case per[n] = <-k.spent:
			default:
				per[n] = make([]laneItem, 0, len(batch)/len(per)+1)
			}
		}
		// The size is taken here, where m was just read for its key, not
		// by the lane, which would read it again once it has left the cache.
		per[n] = append(per[n], laneItem{m: m, ack: ack, topic: rt.topic, partition: p, size: int32(recordSize(m))})
	}
	return k.handOver(ctx, per)
}

// handOver sends each lane its items; what ctx keeps from a lane fails.
func (k *KafkaSink) handOver(ctx context.Context, per [][]laneItem) error {
	var err error
	for i, items := range per {
		if len(items) == 0 {
			continue
		}
		per[i] = nil // the lane owns the slice now
		if err == nil {
			select {
			case k.lanes[i].in <- items:
				continue
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		for _, it := range items {
			it.ack(it.m, err)
		}
	}
	return err
}

// hashPartition is sarama's default (hash) partitioner: FNV-1a of the key,
// as a signed number modulo the partitions, negated when negative.
func hashPartition(key []byte, partitions int32) int32 {
	return partitionOf(keyHash(key), partitions)
}

// keyHash is the FNV-1a hash of a key, as sarama's partitioner takes it.
func keyHash(key []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range key {
		h ^= uint32(c)
		h *= 16777619
	}
	return h
}

// partitionOf is the partition of a key hash: as a signed number modulo
// the partitions, negated when negative.
func partitionOf(h uint32, partitions int32) int32 {
	p := int32(h) % partitions
	if p < 0 {
		p = -p
	}
	return p
}

// hashesKeys says whether one of sinks partitions by the key's hash, so
// that the forwarder takes it while the key is fresh (Outgoing.keyHash).
func hashesKeys(sinks []Sink) bool {
	for _, s := range sinks {
		if _, ok := s.(*KafkaSink); ok {
			return true
		}
	}
	return false
}

// routeTTL bounds how long a learnt partition count is used.
const routeTTL = time.Minute

// route is where a stream's messages go.
type route struct {
	topic      string
	partitions int32
}

// topicOf maps a stream to its topic, checking (or creating) the topic the
// first time; the names are cached, as building them allocates. It also
// learns the partition count, which the key is hashed over, from the
// client's metadata; it is read again after routeTTL.
func (k *KafkaSink) topicOf(stream string) (route, error) {
	if time.Since(k.routesAt) > routeTTL {
		k.streamTopics, k.routesAt = nil, time.Now()
	}
	if r, ok := k.streamTopics[stream]; ok {
		return r, nil
	}
	r := route{topic: k.topics.Topic(stream)}
	if !k.known[r.topic] {
		// ensureTopics bounds its own wait by ConnectTimeout.
		if err := k.ensureTopics(context.Background(), k.client, []string{r.topic}); err != nil {
			return route{}, err
		}
	}
	parts, err := k.client.Partitions(r.topic)
	if err != nil || len(parts) == 0 {
		if err = k.client.RefreshMetadata(r.topic); err == nil {
			parts, err = k.client.Partitions(r.topic)
		}
	}
	if err == nil && len(parts) == 0 {
		err = errors.New("no partitions")
	}
	if err != nil {
		return route{}, fmt.Errorf("kafka partitions of %s: %w: %w", r.topic, ErrUnavailable, err)
	}
	r.partitions = int32(len(parts))
	if k.streamTopics == nil {
		k.streamTopics = map[string]route{}
	}
	k.streamTopics[stream] = r
	return r, nil
}

// readOnlyBytes views s as bytes without copying. Only for bytes nobody
// writes: sarama reads header keys and values when it encodes a batch.
// An empty string stays an empty (not null) Kafka header value.
func readOnlyBytes(s string) []byte {
	if len(s) == 0 {
		return []byte{}
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// Close implements Sink: the lanes send what they hold and wait for the
// answers, up to ctx's deadline; then what is left fails and the
// connections close.
func (k *KafkaSink) Close(ctx context.Context) error {
	if k.lanes == nil {
		return nil
	}
	lanes := k.lanes
	k.lanes, k.client = nil, nil
	for _, l := range lanes {
		close(l.flush)
	}
	var err error
	for _, l := range lanes {
		select {
		case <-l.done:
			continue
		case <-ctx.Done():
			err = fmt.Errorf("kafka close: %w", ctx.Err())
		}
		break
	}
	if err != nil {
		for _, l := range lanes {
			close(l.kill)
			l.cancel()
		}
	}
	for _, l := range lanes {
		// Closing the connections also ends a loop blocked on one.
		_ = l.client.Close()
	}
	for _, l := range lanes {
		<-l.done
		l.cancel()
	}
	return err
}

// Probe implements Prober: Kafka is healthy when metadata for the ensured
// topics can be fetched. It decides failback, so a missing topic keeps the
// forwarder on NATS even where Connect might create it.
func (k *KafkaSink) Probe(ctx context.Context) error { return k.probe(ctx, false) }

// probeConnect is Probe for settings that have not run yet (a reload): a
// topic the broker reports missing counts as reachable when Connect would
// create it, since a new prefix or new streams bring exactly that. Whether
// the creation succeeds shows only at Connect.
func (k *KafkaSink) probeConnect(ctx context.Context) error {
	return k.probe(ctx, k.cfg.CreateTopics)
}

func (k *KafkaSink) probe(ctx context.Context, missingOK bool) error {
	sc, err := SaramaConfig(k.cfg)
	if err != nil {
		return err
	}
	c, err := newClient(ctx, k.cfg.Brokers, sc)
	if err != nil {
		return err
	}
	var topics []string
	for _, s := range k.topics.Ensure {
		topics = append(topics, k.topics.Topic(s))
	}
	// A metadata request to a broker that accepted the connection and then
	// went silent waits for sarama's read timeout; the probe must not hold
	// a shutdown or a failback that long.
	done := make(chan error, 1)
	go func() {
		var err error
		if missingOK {
			// One topic per request: sarama reports one error for all the
			// topics of a request, so "missing" could hide "not authorised".
			for _, t := range topics {
				if err = c.RefreshMetadata(t); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
					break
				}
				err = nil
			}
		} else {
			err = c.RefreshMetadata(topics...)
		}
		_ = c.Close()
		done <- err
	}()
	select {
	case err := <-done:
		switch {
		case err == nil:
			return nil
		case errors.Is(err, sarama.ErrUnknownTopicOrPartition) && !k.cfg.CreateTopics:
			return fmt.Errorf("kafka probe: %w (forwarder.kafka.create_topics is false)", ErrMissingTopic)
		default:
			return fmt.Errorf("kafka probe: %w: %w", ErrUnavailable, explainRefusal(k.cfg, err))
		}
	case <-ctx.Done():
		return fmt.Errorf("kafka probe: %w", ctx.Err())
	}
}

// explainRefusal names the settings to check when the broker was reached but
// the TLS handshake or SASL authentication failed: sarama reports both as
// having "run out of available brokers", which reads like an outage. The
// forwarder still treats them as one (retry, fail over): credentials and
// certificates get fixed or rotated on the broker side too.
func explainRefusal(c KafkaConfig, err error) error {
	var verify *tls.CertificateVerificationError
	var op *net.OpError
	switch {
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed):
		return fmt.Errorf("kafka authentication failed (forwarder.kafka.sasl: mechanism %s, user %q): %w",
			strings.ToUpper(c.SASL.Mechanism), c.SASL.User, err)
	case errors.As(err, &verify):
		return fmt.Errorf("kafka tls: broker certificate not trusted (forwarder.kafka.tls: ca_file, server_name): %w", err)
	case errors.As(err, &op) && op.Op == "remote error":
		// A TLS alert from the broker, typically a client certificate it
		// requires and did not get or does not trust.
		return fmt.Errorf("kafka tls: broker refused the handshake (forwarder.kafka.tls: cert_file, key_file): %w", err)
	}
	return err
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
