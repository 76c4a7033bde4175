package rib

import (
	"errors"
	"fmt"
	"time"

	"github.com/bgpedge/bgpedge/record"
)

// Duplicate policies: what happens to an announcement identical to the
// route state (same attributes, same path id) on the route streams.
const (
	DuplicatesDrop = "drop"
	DuplicatesMark = "mark"
	DuplicatesKeep = "keep"
)

// Config is the `bmp.rib` section.
type Config struct {
	// Enabled keeps the route state and emits bmp.rib.
	Enabled bool `mapstructure:"enabled"`
	// StaleTimeout is how long a router's routes stay stale after its
	// session ended without Peer Downs before they are withdrawn.
	StaleTimeout time.Duration `mapstructure:"stale_timeout"`
	// Duplicates is drop, mark or keep.
	Duplicates string `mapstructure:"duplicates"`
}

// DefaultConfig is off; when enabled, duplicates are dropped.
func DefaultConfig() Config {
	return Config{Enabled: false, StaleTimeout: 5 * time.Minute, Duplicates: DuplicatesDrop}
}

// Validate checks the section; errors name the full key.
func (c Config) Validate() error {
	var errs []error
	switch c.Duplicates {
	case DuplicatesDrop, DuplicatesMark, DuplicatesKeep:
	default:
		errs = append(errs, fmt.Errorf("bmp.rib.duplicates: must be drop, mark or keep, not %q", c.Duplicates))
	}
	if c.StaleTimeout <= 0 {
		errs = append(errs, fmt.Errorf("bmp.rib.stale_timeout: must be positive"))
	}
	return errors.Join(errs...)
}

// StreamRIB is the route state's compacted stream: key the route, value its
// current route event, a tombstone on every withdraw.
const StreamRIB = "bmp.rib"

// Streams declares the route state's stream. It is Optional: its topic
// exists only where the route state is enabled.
func Streams() record.Streams {
	return record.Streams{{Name: StreamRIB, Format: record.FormatJSON, Compact: true, Optional: true}}
}
