package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/exabgp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
	"github.com/bgpedge/bgpedge/rib"
)

// Config is the agent's whole bootstrap configuration: one section per
// package, each owning its keys, defaults and validation.
type Config struct {
	Agent     AgentConfig     `mapstructure:"agent"`
	HTTP      HTTPConfig      `mapstructure:"http"`
	Log       LogConfig       `mapstructure:"log"`
	Buffer    buffer.Config   `mapstructure:"buffer"`
	BMP       BMPConfig       `mapstructure:"bmp"`
	Forwarder ForwarderConfig `mapstructure:"forwarder"`
	// ExaBGP configures `bgpedge exabgp`, the process exaBGP starts; `run`
	// does not use it.
	ExaBGP exabgp.Config `mapstructure:"exabgp"`
	Fleet  FleetConfig   `mapstructure:"fleet"`
}

// AgentConfig is the `agent:` section.
type AgentConfig struct {
	// ID names this edge host in message ids, NATS subjects and fleet status.
	// Defaults to the host name.
	ID string `mapstructure:"id"`
	// StateDir holds the agent's own state: the fleet documents (last-good,
	// pending a restart, rejected; always in the local file's state_dir) and
	// the BMP session journal.
	StateDir string `mapstructure:"state_dir"`
	// ShutdownTimeout bounds a graceful stop: sources closed, forwarder flushed, spool closed.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
}

// HTTPConfig is the `http:` section: metrics, health and readiness.
type HTTPConfig struct {
	// Listen is the address of /metrics, /healthz, /readyz; empty disables the server.
	Listen string `mapstructure:"listen"`
	// Pprof serves /debug/pprof/ on the same listener.
	Pprof bool `mapstructure:"pprof"`
}

// LogConfig is the `log:` section.
type LogConfig struct {
	// Level is debug, info, warn or error; it can change on reload.
	Level string `mapstructure:"level"`
	// Format is json or text; a change needs a restart.
	Format string `mapstructure:"format"`
}

// BMPConfig is the `bmp:` section: the listener's settings and, under
// bmp.encoding, what the forwarder publishes for each BMP message.
type BMPConfig struct {
	bmp.Config `mapstructure:",squash"`
	Encoding   bmp.Encoding `mapstructure:"encoding"`
	// RIB is the route state (package rib), kept in agent.state_dir.
	RIB rib.Config `mapstructure:"rib"`
}

// ForwarderConfig is the `forwarder:` section: forwarder.Config plus the
// switch that lets the agent run as a spool only (no Kafka needed).
type ForwarderConfig struct {
	// Enabled starts the forwarder; without it records stay in the spool.
	Enabled          bool `mapstructure:"enabled"`
	forwarder.Config `mapstructure:",squash"`
}

// DefaultConfig returns the configuration used for every key not set.
func DefaultConfig() Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "bgpedge"
	}
	// The id is a NATS subject token and part of message ids.
	host = strings.NewReplacer(".", "-", ":", "-", " ", "-").Replace(host)
	return Config{
		Agent: AgentConfig{
			ID:              host,
			StateDir:        "/var/lib/bgpedge",
			ShutdownTimeout: 30 * time.Second,
		},
		HTTP:      HTTPConfig{Listen: "127.0.0.1:9611"},
		Log:       LogConfig{Level: "info", Format: "json"},
		Buffer:    buffer.DefaultConfig(),
		BMP:       BMPConfig{Config: bmp.DefaultConfig(), Encoding: defaultEncoding(), RIB: rib.DefaultConfig()},
		Forwarder: ForwarderConfig{Enabled: true, Config: defaultForwarder()},
		ExaBGP:    exabgp.DefaultConfig(),
		Fleet:     DefaultFleetConfig(),
	}
}

// Streams is every output stream bgpedge emits: those each source declares
// for its encoder, and the forwarder's own. A new source adds its
// declaration here, beside its configuration section.
func Streams() record.Streams {
	return slices.Concat(bmp.Streams(), rib.Streams(), exabgp.Streams(), forwarder.Streams())
}

// defaultForwarder is forwarder.DefaultConfig with the topics of every
// declared stream checked (and created) at connect.
func defaultForwarder() forwarder.Config {
	f := forwarder.DefaultConfig()
	for _, st := range Streams() {
		if !st.Optional {
			f.Topics.Ensure = append(f.Topics.Ensure, st.Name)
		}
	}
	return f
}

// ForwarderSettings is the forwarder's configuration with agent-wide values
// filled in (the agent id) and the streams the sources declare.
func (c Config) ForwarderSettings() forwarder.Config {
	f := c.Forwarder.Config
	if f.AgentID == "" {
		f.AgentID = c.Agent.ID
	}
	f.Topics.Streams = Streams()
	return f
}

// ExaBGPBuffer is the spool configuration of `bgpedge exabgp`: every
// buffer.* setting, with a directory of its own (exabgp.state_dir/spool:
// `run` and `exabgp` may share the file, never a spool) and
// exabgp.spool_max_bytes as its capacity when that is set.
func (c Config) ExaBGPBuffer() buffer.Config {
	b := c.Buffer
	b.Dir = c.ExaBGP.SpoolDir()
	if c.ExaBGP.SpoolMaxBytes != 0 {
		b.MaxBytes = c.ExaBGP.SpoolMaxBytes
	}
	return b
}

// Validate checks every section without side effects and joins the errors;
// each names its full key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Agent.ID == "" {
		bad("agent.id", "must not be empty")
	} else if strings.ContainsAny(c.Agent.ID, ".*> \t:/") {
		bad("agent.id", "%q must not contain '.', '*', '>', ':', '/' or spaces (it is a NATS subject token)", c.Agent.ID)
	} else if strings.ContainsAny(c.Agent.ID, `"\`) || strings.IndexFunc(c.Agent.ID, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		bad("agent.id", "%q must not contain '\"', '\\' or unprintable characters (it is written into every event's id)", c.Agent.ID)
	}
	if c.Agent.StateDir == "" || !filepath.IsAbs(c.Agent.StateDir) && !strings.HasPrefix(c.Agent.StateDir, ".") {
		bad("agent.state_dir", "must be an absolute path (or start with ./ for development)")
	}
	if c.Agent.ShutdownTimeout <= 0 {
		bad("agent.shutdown_timeout", "must be positive")
	}
	if c.HTTP.Listen != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			bad("http.listen", "%q is not host:port", c.HTTP.Listen)
		}
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		bad("log.level", "%v", err)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format", "must be json or text, not %q", c.Log.Format)
	}
	if err := c.Buffer.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.BMP.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.BMP.Encoding.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.BMP.RIB.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.BMP.RIB.Enabled && !c.BMP.Encoding.JSON {
		bad("bmp.rib.enabled", "requires bmp.encoding.json (the route state reads the JSON route events)")
	}
	if c.Forwarder.Enabled {
		if err := c.ForwarderSettings().Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.ExaBGP.Validate(); err != nil {
		errs = append(errs, err)
	}
	if m := c.ExaBGP.SpoolMaxBytes; m != 0 && m < 2*c.Buffer.SegmentBytes {
		bad("exabgp.spool_max_bytes", "must be 0 (buffer.max_bytes) or at least twice buffer.segment_bytes (%d)", 2*c.Buffer.SegmentBytes)
	}
	if err := c.Fleet.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w:\n%w", ErrInvalidConfig, err)
	}
	return nil
}

func defaultEncoding() bmp.Encoding {
	e := bmp.DefaultEncoding()
	// Per-peer decoding state (Add-Path, 4-octet AS) must survive restarts.
	e.StateDir = "/var/lib/bgpedge/bmp"
	return e
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "warning", "error":
		if err := l.UnmarshalText([]byte(strings.TrimSuffix(strings.ToLower(s), "ing"))); err != nil {
			return 0, err
		}
		return l, nil
	}
	return 0, fmt.Errorf("must be debug, info, warn or error, not %q", s)
}
