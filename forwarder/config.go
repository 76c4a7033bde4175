package forwarder

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/internal/natsconn"
	"github.com/bgpedge/bgpedge/internal/tlsconf"
	"github.com/bgpedge/bgpedge/record"
)

// Config is the `forwarder:` section of the agent's configuration.
type Config struct {
	// AgentID names this edge host in message ids, headers and NATS subjects.
	// The agent fills it from agent.id when it is left empty here.
	AgentID string `mapstructure:"agent_id"`
	// Sinks lists the sinks by role, most preferred first: the first healthy
	// one drains the spool. Empty means [kafka], plus nats when
	// nats.enabled is true, which is what configurations written before the
	// list meant. Use SinkOrder, not this field.
	Sinks []string `mapstructure:"sinks"`
	// FailoverAfter is how long a sink must have been unreachable before the
	// forwarder drains to the next sink of the list instead.
	FailoverAfter time.Duration `mapstructure:"failover_after"`
	// FailbackAfter is how long an earlier sink of the list must have been
	// healthy, while a later one drains, before the forwarder returns to it
	// (hysteresis).
	FailbackAfter time.Duration `mapstructure:"failback_after"`
	// ProbeInterval is how often an earlier, unhealthy sink is probed.
	ProbeInterval time.Duration `mapstructure:"probe_interval"`
	// BackoffMin and BackoffMax bound the exponential backoff (with jitter)
	// between attempts while every sink is down.
	BackoffMin time.Duration `mapstructure:"backoff_min"`
	BackoffMax time.Duration `mapstructure:"backoff_max"`
	// ReadBatch is how many spool records are read at once.
	ReadBatch int `mapstructure:"read_batch"`
	// MaxInFlight bounds the output messages handed to a sink and not yet acknowledged.
	MaxInFlight int `mapstructure:"max_in_flight"`
	// MaxInFlightBytes bounds the memory of those messages: key, value and
	// headers plus a fixed 512 bytes a message for what the forwarder and
	// the sink's client keep beside them. Memory then follows neither the
	// message size nor the backlog.
	MaxInFlightBytes int `mapstructure:"max_in_flight_bytes"`
	// Encoders is how many goroutines encode at once (0: GOMAXPROCS), for
	// encoders that allow it (Parallel); output order follows spool order.
	Encoders int `mapstructure:"encoders"`
	// AckInterval is how often the acknowledged prefix is reported to the spool.
	AckInterval time.Duration `mapstructure:"ack_interval"`
	// ShutdownTimeout bounds the final flush when the forwarder stops.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`

	Kafka  KafkaConfig  `mapstructure:"kafka"`
	NATS   NATSConfig   `mapstructure:"nats"`
	File   FileConfig   `mapstructure:"file"`
	Topics TopicsConfig `mapstructure:"topics"`
	DLQ    DLQConfig    `mapstructure:"dlq"`
}

// KafkaConfig configures the primary sink.
type KafkaConfig struct {
	Brokers  []string `mapstructure:"brokers"`
	ClientID string   `mapstructure:"client_id"`
	// Version is the Kafka protocol version to speak, e.g. "3.9.0".
	Version string `mapstructure:"version"`
	// Compression is none, gzip, snappy, lz4 or zstd.
	Compression string `mapstructure:"compression"`
	// CompactedCompression is the compression of the compacted topics
	// (bmp.rib): "" follows Compression. Such a topic keeps every router's
	// table for good and is read whole by every consumer that joins, and
	// its copies of the route events are what the broker stores twice.
	CompactedCompression string        `mapstructure:"compacted_compression"`
	FlushBytes           int           `mapstructure:"flush_bytes"`
	FlushMessages        int           `mapstructure:"flush_messages"`
	FlushFrequency       time.Duration `mapstructure:"flush_frequency"`
	// MaxMessageBytes bounds a message and a partition's record batch in one
	// produce request; keep it at or below the brokers' message.max.bytes
	// (1048588 by default), or whole batches are rejected.
	MaxMessageBytes int `mapstructure:"max_message_bytes"`
	// Producers is how many producer lanes (each with its own
	// connection) share the partitions: partition i goes to producer
	// i mod producers, after the usual hash of the key.
	Producers    int           `mapstructure:"producers"`
	RetryMax     int           `mapstructure:"retry_max"`
	RetryBackoff time.Duration `mapstructure:"retry_backoff"`
	DialTimeout  time.Duration `mapstructure:"dial_timeout"`
	// CreateTopics creates missing topics at connect; when false a missing
	// topic fails the connect, naming it.
	CreateTopics      bool      `mapstructure:"create_topics"`
	Partitions        int32     `mapstructure:"partitions"`
	ReplicationFactor int16     `mapstructure:"replication_factor"`
	TLS               TLSConfig `mapstructure:"tls"`
	SASL              SASL      `mapstructure:"sasl"`
}

// TLSConfig is shared by the Kafka and NATS sinks.
type TLSConfig = tlsconf.Config

// SASL configures Kafka authentication.
type SASL struct {
	// Mechanism is "" (off), PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string `mapstructure:"mechanism"`
	User      string `mapstructure:"user"`
	Password  string `mapstructure:"password"`
}

// NATSConfig configures the JetStream sink.
type NATSConfig struct {
	// Enabled is the shorthand of configurations written before
	// forwarder.sinks: with an empty list it means [kafka, nats]. With a
	// list, true requires nats in it.
	Enabled bool `mapstructure:"enabled"`
	// The connection: url, credentials, tls (the block every NATS user shares).
	natsconn.Config `mapstructure:",squash"`
	// Stream is the JetStream stream; SubjectPrefix starts every subject:
	// <subject_prefix>.<agent_id>.<stream>.
	Stream        string `mapstructure:"stream"`
	SubjectPrefix string `mapstructure:"subject_prefix"`
	// CreateStream creates the stream when it is missing.
	CreateStream bool          `mapstructure:"create_stream"`
	Replicas     int           `mapstructure:"replicas"`
	MaxPending   int           `mapstructure:"max_pending"`
	AckTimeout   time.Duration `mapstructure:"ack_timeout"`
}

// TopicsConfig maps output streams (bmp.raw, bmp.route.pre-policy, …) to Kafka topics.
type TopicsConfig struct {
	// Prefix starts every topic name: the default "bgpedge." gives bgpedge.bmp.raw.
	Prefix string `mapstructure:"prefix"`
	// ShortRouteNames drops the "route." part of route streams, so that with
	// an empty prefix the names are bbmp2kafka-style: bmp.pre-policy, bmp.loc-rib.
	ShortRouteNames bool `mapstructure:"short_route_names"`
	// Overrides names the topic of a stream outright (no prefix applied).
	Overrides map[string]string `mapstructure:"overrides"`
	// Ensure lists the streams whose topics are checked (and created, with
	// kafka.create_topics) when connecting; topics of other streams are
	// checked when their first message is sent. The agent's default is every
	// declared stream.
	Ensure []string `mapstructure:"ensure"`
	// Streams are the output streams the sources declare (and the
	// forwarder's own, Streams()): their names, default topics and formats.
	// Not a configuration key: the pipeline fills it from the sources. When
	// empty, stream names are not checked and a stream's topic is its name.
	Streams record.Streams `mapstructure:"-"`
}

// DLQConfig configures the dead-letter output for records that cannot be encoded.
type DLQConfig struct {
	// Enabled sends such records, raw, to the dlq stream; when false they
	// are dropped, counted and logged.
	Enabled bool `mapstructure:"enabled"`
}

// minInFlightBytes keeps a sink fed with at least a few record batches.
const minInFlightBytes = 64 << 10

// DefaultConfig returns the defaults documented in configs/.
func DefaultConfig() Config {
	return Config{
		FailoverAfter:    30 * time.Second,
		FailbackAfter:    10 * time.Second,
		ProbeInterval:    2 * time.Second,
		BackoffMin:       250 * time.Millisecond,
		BackoffMax:       30 * time.Second,
		ReadBatch:        2048,
		MaxInFlight:      100000,
		MaxInFlightBytes: 8 << 20,
		AckInterval:      100 * time.Millisecond,
		ShutdownTimeout:  10 * time.Second,
		Kafka: KafkaConfig{
			Brokers:              []string{"127.0.0.1:9092"},
			ClientID:             "bgpedge",
			Version:              "3.9.0",
			Compression:          "none",
			CompactedCompression: "lz4",
			FlushBytes:           1 << 20,
			FlushMessages:        0,
			FlushFrequency:       5 * time.Millisecond,
			MaxMessageBytes:      1000000,
			Producers:            3,
			RetryMax:             5,
			RetryBackoff:         200 * time.Millisecond,
			DialTimeout:          5 * time.Second,
			CreateTopics:         true,
			Partitions:           6,
			ReplicationFactor:    1,
		},
		File: DefaultFileConfig(),
		NATS: NATSConfig{
			Config:        natsconn.Config{URL: "nats://127.0.0.1:4222"},
			Stream:        "BGPEDGE",
			SubjectPrefix: "bgpedge",
			CreateStream:  true,
			Replicas:      1,
			MaxPending:    4096,
			AckTimeout:    10 * time.Second,
		},
		Topics: TopicsConfig{Prefix: "bgpedge."},
		DLQ:    DLQConfig{Enabled: true},
	}
}

// Validate checks the section without touching the network; errors name the full key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, msg string, args ...any) {
		errs = append(errs, fmt.Errorf("forwarder.%s: %s", key, fmt.Sprintf(msg, args...)))
	}
	if c.AgentID == "" {
		bad("agent_id", "must not be empty")
	} else if strings.ContainsAny(c.AgentID, ".*> \t:") {
		bad("agent_id", "must not contain '.', '*', '>', ':' or spaces (it is a NATS subject token)")
	}
	positive := map[string]time.Duration{
		"failover_after": c.FailoverAfter, "failback_after": c.FailbackAfter,
		"probe_interval": c.ProbeInterval, "backoff_min": c.BackoffMin, "backoff_max": c.BackoffMax,
		"ack_interval": c.AckInterval, "shutdown_timeout": c.ShutdownTimeout,
	}
	for k, v := range positive {
		if v <= 0 {
			bad(k, "must be positive")
		}
	}
	if c.BackoffMax < c.BackoffMin {
		bad("backoff_max", "must not be below backoff_min")
	}
	if c.ReadBatch < 1 || c.ReadBatch > 1<<20 {
		bad("read_batch", "must be between 1 and 1048576")
	}
	if c.MaxInFlight < 1 {
		bad("max_in_flight", "must be at least 1")
	}
	if c.MaxInFlightBytes < minInFlightBytes {
		bad("max_in_flight_bytes", "must be at least %d (64KiB)", minInFlightBytes)
	}
	if c.Encoders < 0 || c.Encoders > 1024 {
		bad("encoders", "must be between 0 (GOMAXPROCS) and 1024")
	}
	c.validateSinks(bad)
	known := c.Topics.Streams.Names()
	checked := len(known) > 0
	for _, stream := range slices.Sorted(maps.Keys(c.Topics.Overrides)) {
		topic := c.Topics.Overrides[stream]
		if checked && !slices.Contains(known, stream) {
			bad("topics.overrides."+stream, "no stream %q (streams: %s)", stream, strings.Join(known, ", "))
		}
		if topic == "" || strings.ContainsAny(topic, " /\\") {
			bad("topics.overrides."+stream, "%q is not a valid topic name", topic)
		}
	}
	for i, stream := range c.Topics.Ensure {
		if checked && !slices.Contains(known, stream) {
			bad(fmt.Sprintf("topics.ensure[%d]", i), "no stream %q (streams: %s)", stream, strings.Join(known, ", "))
		}
	}
	return errors.Join(errs...)
}

func compressionCodec(name string) (sarama.CompressionCodec, error) {
	switch strings.ToLower(name) {
	case "", "none":
		return sarama.CompressionNone, nil
	case "gzip":
		return sarama.CompressionGZIP, nil
	case "snappy":
		return sarama.CompressionSnappy, nil
	case "lz4":
		return sarama.CompressionLZ4, nil
	case "zstd":
		return sarama.CompressionZSTD, nil
	}
	return sarama.CompressionNone, fmt.Errorf("must be none, gzip, snappy, lz4 or zstd, not %q", name)
}

// Topic is the Kafka topic of an output stream: its override, else the
// prefix and the stream's declared default topic.
func (t TopicsConfig) Topic(stream string) string {
	if o, ok := t.Overrides[stream]; ok {
		return o
	}
	if s, ok := t.Streams.Lookup(stream); ok {
		stream = s.DefaultTopic()
	}
	if t.ShortRouteNames {
		stream = strings.Replace(stream, ".route.", ".", 1)
	}
	return t.Prefix + stream
}

// Subject is the NATS subject of an output stream.
func (n NATSConfig) Subject(agentID, stream string) string {
	return n.SubjectPrefix + "." + agentID + "." + stream
}

// StreamOfSubject recovers the output stream from a subject made by Subject.
func (n NATSConfig) StreamOfSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, n.SubjectPrefix+".")
	if !ok {
		return "", false
	}
	_, stream, ok := strings.Cut(rest, ".")
	return stream, ok && stream != ""
}

// validateKafka checks forwarder.kafka; it runs when kafka is in the list.
func validateKafka(c Config, bad badFunc) {
	k := c.Kafka
	for key, v := range map[string]time.Duration{"kafka.retry_backoff": k.RetryBackoff, "kafka.dial_timeout": k.DialTimeout} {
		if v <= 0 {
			bad(key, "must be positive")
		}
	}
	if len(k.Brokers) == 0 {
		bad("kafka.brokers", "at least one broker is required")
	}
	for _, b := range k.Brokers {
		if !strings.Contains(b, ":") {
			bad("kafka.brokers", "%q is not host:port", b)
		}
	}
	if v, err := sarama.ParseKafkaVersion(k.Version); err != nil {
		bad("kafka.version", "%v", err)
	} else if _, err := produceVersion(v); err != nil {
		bad("kafka.version", "%v", err)
	}
	if _, err := compressionCodec(k.Compression); err != nil {
		bad("kafka.compression", "%v", err)
	}
	if k.CompactedCompression != "" {
		if _, err := compressionCodec(k.CompactedCompression); err != nil {
			bad("kafka.compacted_compression", "%v", err)
		}
	}
	for _, f := range []struct {
		key string
		v   int64
	}{{"kafka.flush_bytes", int64(k.FlushBytes)}, {"kafka.flush_messages", int64(k.FlushMessages)}, {"kafka.flush_frequency", int64(k.FlushFrequency)}} {
		if f.v < 0 {
			bad(f.key, "must not be negative")
		}
	}
	if k.MaxMessageBytes < minMessageBytes {
		bad("kafka.max_message_bytes", "must be at least %d (a dead letter carries up to 1 KiB of key and %d bytes of headers)", minMessageBytes, messageOverhead)
	}
	if k.Producers < 1 || k.Producers > 16 {
		bad("kafka.producers", "must be between 1 and 16")
	}
	if k.RetryMax < 1 {
		bad("kafka.retry_max", "must be at least 1 (a leader moving would otherwise end the session)")
	}
	if k.Partitions < 1 {
		bad("kafka.partitions", "must be at least 1")
	}
	if k.ReplicationFactor < 1 {
		bad("kafka.replication_factor", "must be at least 1")
	}
	switch strings.ToUpper(k.SASL.Mechanism) {
	case "":
	case sarama.SASLTypePlaintext, sarama.SASLTypeSCRAMSHA256, sarama.SASLTypeSCRAMSHA512:
		if k.SASL.User == "" {
			bad("kafka.sasl.user", "is required with a SASL mechanism")
		}
	default:
		bad("kafka.sasl.mechanism", "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not %q", k.SASL.Mechanism)
	}
	k.TLS.Validate("kafka.tls", bad)
}

// validateNATS checks forwarder.nats; it runs when nats is in the list.
func validateNATS(c Config, bad badFunc) {
	n := c.NATS
	if n.AckTimeout <= 0 {
		bad("nats.ack_timeout", "must be positive")
	}
	if n.URL == "" {
		bad("nats.url", "is required when nats is in forwarder.sinks")
	}
	if n.Stream == "" || strings.ContainsAny(n.Stream, ".*> ") {
		bad("nats.stream", "must be a non-empty name without '.', '*', '>' or spaces")
	}
	if n.SubjectPrefix == "" || strings.ContainsAny(n.SubjectPrefix, "*> ") {
		bad("nats.subject_prefix", "must be non-empty, without wildcards or spaces")
	}
	if n.Replicas < 1 || n.Replicas > 5 {
		bad("nats.replicas", "must be between 1 and 5")
	}
	if n.MaxPending < 1 {
		bad("nats.max_pending", "must be at least 1")
	}
	n.Config.Validate("nats", false, bad)
}
