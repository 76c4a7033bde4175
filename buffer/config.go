package buffer

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Policy says what Append does when the spool is at capacity.
type Policy string

const (
	// PolicyBlock makes Append wait until acknowledgements free space. This is
	// the backpressure sources feel: BMP sessions and exaBGP ingest stop reading.
	PolicyBlock Policy = "block"
	// PolicyDropOldest deletes the oldest segments, acknowledged or not, to make
	// room; every dropped record is counted and logged with its seq range.
	PolicyDropOldest Policy = "drop-oldest"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// Config is the `buffer:` section of the agent's configuration.
type Config struct {
	// Dir holds the segment files. Default /var/lib/bgpedge/spool.
	Dir string `mapstructure:"dir"`
	// SegmentBytes is the size at which the active segment file is closed and
	// a new one started; a segment is deleted whole once all of it is acked,
	// and the active one reuses the space of its acked records, so disk use
	// follows the backlog to within about one segment. Default 64 MiB.
	SegmentBytes int64 `mapstructure:"segment_bytes"`
	// MaxBytes is the disk budget of the spool (sum of segment file sizes).
	// It is a soft limit: it may be exceeded by one group commit. Must be at
	// least two segments. Default 1 GiB.
	MaxBytes int64 `mapstructure:"max_bytes"`
	// MaxAge, when non-zero, drops whole segments whose newest record was
	// written longer ago than this, under either policy (counted with reason
	// "age"). Default 0 (no age limit).
	MaxAge time.Duration `mapstructure:"max_age"`
	// Policy is "block" (default) or "drop-oldest".
	Policy Policy `mapstructure:"policy"`
	// BatchRecords bounds the records coalesced into one commit (one fsync).
	// Default 4000.
	BatchRecords int `mapstructure:"batch_records"`
	// BatchBytes bounds the encoded bytes coalesced into one commit.
	// Default 4 MiB.
	BatchBytes int `mapstructure:"batch_bytes"`
	// MaxDelay is how long the writer waits for more concurrent appenders to
	// join a commit before syncing it. It only applies while other appenders
	// are on their way; a lone appender is never delayed. Default 2ms.
	MaxDelay time.Duration `mapstructure:"max_delay"`
	// KeepAcked keeps acknowledged records readable (`bgpedge buffer
	// inspect`) until their segment is deleted whole, instead of reusing
	// their space in the active segment. The active file then grows to
	// SegmentBytes even when the backlog is small, and commits append to it,
	// which makes them slower. Default false.
	KeepAcked bool `mapstructure:"keep_acked"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Dir:          "/var/lib/bgpedge/spool",
		SegmentBytes: 64 * mib,
		MaxBytes:     1 * gib,
		Policy:       PolicyBlock,
		BatchRecords: 4000,
		BatchBytes:   4 * mib,
		MaxDelay:     2 * time.Millisecond,
	}
}

// Validate checks the configuration without touching the disk. Errors name
// the full key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("buffer.%s: "+format, append([]any{key}, args...)...))
	}
	if c.Dir == "" {
		bad("dir", "must not be empty")
	}
	if c.SegmentBytes < 1*mib || c.SegmentBytes > 1*gib {
		bad("segment_bytes", "must be between %d and %d", 1*mib, 1*gib)
	}
	if c.MaxBytes < 2*c.SegmentBytes {
		bad("max_bytes", "must be at least twice buffer.segment_bytes (%d)", 2*c.SegmentBytes)
	}
	if c.MaxAge != 0 && c.MaxAge < time.Minute {
		bad("max_age", "must be 0 (no limit) or at least 1m")
	}
	switch c.Policy {
	case PolicyBlock, PolicyDropOldest:
	default:
		bad("policy", "must be %q or %q", PolicyBlock, PolicyDropOldest)
	}
	if c.BatchRecords < 1 || c.BatchRecords > 1_000_000 {
		bad("batch_records", "must be between 1 and 1000000")
	}
	if c.BatchBytes < 64*kib || c.BatchBytes > 256*mib {
		bad("batch_bytes", "must be between %d and %d", 64*kib, 256*mib)
	}
	if c.MaxDelay < 0 || c.MaxDelay > time.Second {
		bad("max_delay", "must be between 0 and 1s")
	}
	return errors.Join(errs...)
}

// Options converts the configuration into spool options.
func (c Config) Options(logger *slog.Logger, reg prometheus.Registerer) Options {
	delay := c.MaxDelay
	if delay == 0 {
		delay = -1 // configured "no wait"; a zero Options.MaxDelay means the default
	}
	return Options{
		Dir:          c.Dir,
		SegmentBytes: c.SegmentBytes,
		MaxBytes:     c.MaxBytes,
		MaxAge:       c.MaxAge,
		Policy:       c.Policy,
		BatchRecords: c.BatchRecords,
		BatchBytes:   c.BatchBytes,
		MaxDelay:     delay,
		KeepAcked:    c.KeepAcked,
		FirstSeq:     SeqFromClock(time.Now()),
		Logger:       logger,
		Registerer:   reg,
	}
}

// SeqFromClock is the first seq for a new spool created at t: its Unix time
// in microseconds. Message ids are built from seqs, and a spool that starts
// at 1 again after its directory was wiped would reuse the old spool's ids:
// JetStream drops a message whose id it saw within its duplicate window and
// acknowledges it as stored, and consumers that deduplicate by id drop it
// too. Starting at the clock keeps the new ids above the old ones unless the
// old spool averaged more than one record per microsecond over its life, or
// the clock stepped back. Microseconds keep seqs below 2^53, exact in JSON
// numbers, for two centuries.
func SeqFromClock(t time.Time) uint64 {
	return uint64(max(t.UnixMicro(), 1))
}

// Options configures Open. Zero values take the defaults of DefaultConfig,
// except MaxBytes (0: no capacity limit) and MaxAge (0: no age limit). A
// negative MaxDelay means never wait for more appenders.
type Options struct {
	Dir          string
	SegmentBytes int64
	MaxBytes     int64
	MaxAge       time.Duration
	Policy       Policy
	BatchRecords int
	BatchBytes   int
	MaxDelay     time.Duration
	// KeepAcked: see Config.KeepAcked.
	KeepAcked bool
	// FirstSeq is the first seq of a spool whose directory holds no segment
	// file yet (0 means 1); a spool with segments goes on from its own.
	// Config.Options sets it from the clock (SeqFromClock).
	FirstSeq uint64
	// ReadOnly opens the spool for inspection (the CLI): no writer, no
	// deletion, no quarantine; Append and Ack fail with ErrReadOnly.
	ReadOnly   bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer

	// openSegment replaces the segment opener in tests, to inject errors
	// that root (which runs the tests) cannot provoke, like EACCES.
	openSegment func(segFile, bool) (*segment, segmentInfo, error)
	// syncHook, in tests, runs before each fdatasync of the writer (commits,
	// the ack watermark, new segments); an error stands for a failed one.
	syncHook func() error
	// noSync, in tests, skips the fdatasync that ends each commit: the
	// negative control of the power-cut test (TestPowerCutNoSync), which
	// must see acknowledged records lost.
	noSync bool
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultConfig()
	if o.Dir == "" {
		return o, errors.New("buffer: options: dir must not be empty")
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = d.SegmentBytes
	}
	if o.Policy == "" {
		o.Policy = d.Policy
	}
	if o.Policy != PolicyBlock && o.Policy != PolicyDropOldest {
		return o, fmt.Errorf("buffer: options: unknown policy %q", o.Policy)
	}
	if o.BatchRecords <= 0 {
		o.BatchRecords = d.BatchRecords
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = d.BatchBytes
	}
	if o.MaxDelay == 0 {
		o.MaxDelay = d.MaxDelay
	}
	if o.MaxBytes < 0 || o.MaxAge < 0 {
		return o, errors.New("buffer: options: max_bytes and max_age must not be negative")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}
