package forwarder

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// badFunc reports one invalid key (relative to forwarder.) of a section.
type badFunc = func(key, msg string, args ...any)

// sinkKind is one row of the sink table: how a sink named in
// forwarder.sinks is checked and built. A new sink is one row here, its
// own file and its configuration block; the run loop, metrics, readiness
// and reach know sinks only by their position in the list.
type sinkKind struct {
	// validate checks the sink's own keys; it runs only when the sink is listed.
	validate func(c Config, bad badFunc)
	// build returns the unconnected sink; reg takes its own metrics (nil:
	// not registered, e.g. for a reach probe).
	build func(c Config, logger *slog.Logger, reg prometheus.Registerer) (Sink, error)
	// section is the sink's configuration block: a reload that changes it
	// builds a new forwarder.
	section func(c Config) any
}

// sinkTable is the table of every sink forwarder.sinks may name. A function,
// not a variable, so nothing can change it at run time.
func sinkTable() map[string]sinkKind {
	return map[string]sinkKind{
		SinkKafka: {
			validate: validateKafka,
			section:  func(c Config) any { return c.Kafka },
			build: func(c Config, logger *slog.Logger, _ prometheus.Registerer) (Sink, error) {
				if _, err := SaramaConfig(c.Kafka); err != nil {
					return nil, err
				}
				return NewKafkaSink(c.Kafka, c.Topics, logger), nil
			},
		},
		SinkNATS: {
			validate: validateNATS,
			section:  func(c Config) any { return c.NATS },
			build: func(c Config, logger *slog.Logger, _ prometheus.Registerer) (Sink, error) {
				if _, err := NATSOptions(c.NATS, ""); err != nil {
					return nil, err
				}
				return NewNATSSink(c.NATS, c.AgentID, logger), nil
			},
		},
		SinkFile: {
			validate: validateFile,
			section:  func(c Config) any { return c.File },
			build: func(c Config, logger *slog.Logger, reg prometheus.Registerer) (Sink, error) {
				return NewFileSink(c.File, c.Topics.Streams, logger, reg)
			},
		},
	}
}

// SinkNames lists the names forwarder.sinks accepts, sorted.
func SinkNames() []string {
	names := make([]string, 0, 3)
	for n := range sinkTable() {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// SinkOrder is the effective list of sinks, most preferred first:
// forwarder.sinks, or, when it is empty, kafka plus nats with nats.enabled
// (what a configuration written before the list means).
func (c Config) SinkOrder() []string {
	if len(c.Sinks) > 0 {
		return c.Sinks
	}
	if c.NATS.Enabled {
		return []string{SinkKafka, SinkNATS}
	}
	return []string{SinkKafka}
}

// validateSinks checks forwarder.sinks and the section of each listed sink.
func (c Config) validateSinks(bad badFunc) {
	table := sinkTable()
	seen := map[string]bool{}
	for i, name := range c.Sinks {
		switch {
		case table[name].build == nil:
			bad(fmt.Sprintf("sinks[%d]", i), "no sink %q (sinks: %s)", name, strings.Join(SinkNames(), ", "))
		case seen[name]:
			bad(fmt.Sprintf("sinks[%d]", i), "%s is listed twice", name)
		}
		seen[name] = true
	}
	if len(c.Sinks) > 0 && c.NATS.Enabled && !seen[SinkNATS] {
		bad("nats.enabled", "is true but nats is not in forwarder.sinks: add it to the list (the list decides) or set nats.enabled to false")
	}
	for _, name := range c.SinkOrder() {
		if k, ok := table[name]; ok && !seen[name+"#validated"] {
			seen[name+"#validated"] = true
			k.validate(c, bad)
		}
	}
}

// DestinationsChanged reports whether next connects differently from cur:
// the list of sinks, any listed sink's settings, the topics, or the agent id
// (the NATS client name). A reload keeps the running forwarder's sinks when
// nothing of this changed.
func DestinationsChanged(cur, next Config) bool {
	if !slices.Equal(cur.SinkOrder(), next.SinkOrder()) || cur.AgentID != next.AgentID ||
		!reflect.DeepEqual(cur.Topics, next.Topics) {
		return true
	}
	table := sinkTable()
	for _, name := range cur.SinkOrder() {
		if k, ok := table[name]; ok && !reflect.DeepEqual(k.section(cur), k.section(next)) {
			return true
		}
	}
	return false
}

// ValidateSinks checks the sections of the named sinks, listed or not: a
// command that uses a sink outside forwarder.sinks (the bridge, tail)
// validates what it uses.
func (c Config) ValidateSinks(names ...string) error {
	var errs []error
	bad := func(key, msg string, args ...any) {
		errs = append(errs, fmt.Errorf("forwarder.%s: %s", key, fmt.Sprintf(msg, args...)))
	}
	table := sinkTable()
	for _, name := range names {
		k, ok := table[name]
		if !ok {
			return fmt.Errorf("forwarder: no sink %q", name)
		}
		if !slices.Contains(c.SinkOrder(), name) { // else Validate checked it
			k.validate(c, bad)
		}
	}
	return errors.Join(errs...)
}

// buildSinks builds the listed sinks in order through the table.
func buildSinks(c Config, logger *slog.Logger, reg prometheus.Registerer) ([]Sink, error) {
	table := sinkTable()
	var sinks []Sink
	for _, name := range c.SinkOrder() {
		k, ok := table[name]
		if !ok {
			return nil, fmt.Errorf("forwarder.sinks: no sink %q", name)
		}
		s, err := k.build(c, logger, reg)
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, s)
	}
	return sinks, nil
}

// Timeouts is implemented by sinks that know how long their own connect
// and probe may take: the forwarder bounds each sink's Connect and Probe by
// them instead of one figure for every sink.
type Timeouts interface {
	ConnectTimeout() time.Duration
	ProbeTimeout() time.Duration
}

// defaultSinkTimeout bounds Connect and Probe of a sink without Timeouts.
const defaultSinkTimeout = 15 * time.Second

func connectTimeout(s Sink) time.Duration {
	if t, ok := s.(Timeouts); ok {
		return t.ConnectTimeout()
	}
	return defaultSinkTimeout
}

func probeTimeout(s Sink) time.Duration {
	if t, ok := s.(Timeouts); ok {
		return t.ProbeTimeout()
	}
	return defaultSinkTimeout
}
