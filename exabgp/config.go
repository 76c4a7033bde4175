package exabgp

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/bgpedge/bgpedge/internal/natsconn"
)

// Queue policies: what the stdin reader does when the in-memory queue is full.
const (
	// PolicyBlock stops reading stdin until the spool catches up. Nothing is
	// lost, but exaBGP stalls once its pipe fills, and a stall longer than
	// the hold time drops the BGP sessions.
	PolicyBlock = "block"
	// PolicyDrop keeps reading and drops the line, counted and logged:
	// sessions stay up, events are lost.
	PolicyDrop = "drop"
)

// Command verbs, also the values of allowed_verbs and of the "verb" metric label.
const (
	VerbAnnounceRoute = "announce-route"
	VerbWithdrawRoute = "withdraw-route"
	VerbAnnounceFlow  = "announce-flow"
	VerbWithdrawFlow  = "withdraw-flow"
	VerbRouteRefresh  = "route-refresh"
	VerbList          = "list"
)

var allVerbs = []string{VerbAnnounceRoute, VerbWithdrawRoute, VerbAnnounceFlow, VerbWithdrawFlow, VerbRouteRefresh}

// Config is the `exabgp:` section.
type Config struct {
	// StateDir holds this instance's spool (StateDir/spool) and the journal
	// of injected routes (StateDir/routes.json).
	StateDir string `mapstructure:"state_dir"`
	// SpoolMaxBytes caps the spool's disk use; 0 takes buffer.max_bytes.
	// The spool's other settings are buffer.*.
	SpoolMaxBytes int64 `mapstructure:"spool_max_bytes"`
	// QueueLines bounds the in-memory queue between stdin and the spool.
	QueueLines int `mapstructure:"queue_lines"`
	// QueuePolicy is block (default) or drop.
	QueuePolicy string `mapstructure:"queue_policy"`
	// BatchLines is the most lines appended to the spool in one call.
	BatchLines int `mapstructure:"batch_lines"`
	// MaxLineBytes is the longest line accepted from exaBGP; longer lines
	// are truncated in the spool and reported as decode errors.
	MaxLineBytes int `mapstructure:"max_line_bytes"`
	// RawStream also emits every line on exabgp.raw.
	RawStream bool `mapstructure:"raw_stream"`
	// RefreshOnStart asks every established neighbor to resend its routes
	// (route refresh) when the process starts, for the events that were in
	// flight when the previous process died.
	RefreshOnStart bool `mapstructure:"refresh_on_start"`
	// RefreshFamilies are the "afi safi" pairs refreshed on start.
	RefreshFamilies []string `mapstructure:"refresh_families"`
	// MetricsListen serves /metrics of this process (host:port); empty: off.
	MetricsListen string `mapstructure:"metrics_listen"`
	// Commands is the route command channel from central.
	Commands CommandsConfig `mapstructure:"commands"`
	// Policy is checked before any command reaches exaBGP.
	Policy PolicyConfig `mapstructure:"policy"`
}

// CommandsConfig configures the NATS request/reply channel for route commands.
type CommandsConfig struct {
	// Enabled subscribes to Subject; off by default.
	Enabled bool `mapstructure:"enabled"`
	// Subject defaults to bgpedge.<agent-id>.exabgp.command.
	Subject string `mapstructure:"subject"`
	// AckTimeout is how long a command waits for exaBGP's done/error.
	AckTimeout time.Duration `mapstructure:"ack_timeout"`
	NATS       NATSConfig    `mapstructure:"nats"`
}

// NATSConfig is how to reach and authenticate to NATS: the connection block
// every NATS user of bgpedge shares.
type NATSConfig = natsconn.Config

// PolicyConfig is the local policy for commands from central. The zero value
// allows nothing.
type PolicyConfig struct {
	// AllowedVerbs among announce-route, withdraw-route, announce-flow,
	// withdraw-flow, route-refresh. "list" is always allowed.
	AllowedVerbs []string `mapstructure:"allowed_verbs"`
	// AllowedPrefixes are CIDRs a route (or a flow's source/destination) must
	// lie in, each optionally with the longest route length allowed inside
	// it: "100.100.0.0/16 le 28". Without le, MaxPrefixLengthV4/V6 applies.
	AllowedPrefixes []string `mapstructure:"allowed_prefixes"`
	// MaxPrefixLengthV4 / V6 bound how specific an injected route may be
	// inside allowed prefixes that give no le of their own.
	MaxPrefixLengthV4 int `mapstructure:"max_prefix_length_v4"`
	MaxPrefixLengthV6 int `mapstructure:"max_prefix_length_v6"`
	// AllowedNeighbors are the neighbor addresses a command may select;
	// empty means commands must not select one (they go to every neighbor).
	AllowedNeighbors []string `mapstructure:"allowed_neighbors"`
	// AllowedNextHops are CIDRs next hops must lie in; "self" is allowed if listed.
	AllowedNextHops []string `mapstructure:"allowed_next_hops"`
	// MaxRoutes caps the routes and flows injected at once.
	MaxRoutes int `mapstructure:"max_routes"`
	// RatePerSecond and RateBurst limit accepted commands.
	RatePerSecond float64 `mapstructure:"rate_per_second"`
	RateBurst     int     `mapstructure:"rate_burst"`
}

// DefaultConfig is the configuration used for keys the file does not set.
func DefaultConfig() Config {
	return Config{
		StateDir:        "/var/lib/bgpedge/exabgp",
		QueueLines:      65536,
		QueuePolicy:     PolicyBlock,
		BatchLines:      4096,
		MaxLineBytes:    4 << 20,
		RawStream:       true,
		RefreshOnStart:  true,
		RefreshFamilies: []string{"ipv4 unicast", "ipv6 unicast"},
		Commands: CommandsConfig{
			AckTimeout: 5 * time.Second,
		},
		Policy: PolicyConfig{
			MaxPrefixLengthV4: 32,
			MaxPrefixLengthV6: 128,
			MaxRoutes:         1000,
			RatePerSecond:     50,
			RateBurst:         100,
		},
	}
}

// Validate checks the configuration; errors name the full key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("exabgp.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.StateDir == "" {
		bad("state_dir", "must be set")
	}
	if c.SpoolMaxBytes != 0 && c.SpoolMaxBytes < 1<<20 {
		bad("spool_max_bytes", "must be 0 (buffer.max_bytes) or at least 1048576")
	}
	if c.QueueLines < 1 || c.QueueLines > 1<<24 {
		bad("queue_lines", "must be between 1 and 16777216")
	}
	if c.QueuePolicy != PolicyBlock && c.QueuePolicy != PolicyDrop {
		bad("queue_policy", "must be block or drop, not %q", c.QueuePolicy)
	}
	if c.BatchLines < 1 || c.BatchLines > 65536 {
		bad("batch_lines", "must be between 1 and 65536")
	}
	if c.MaxLineBytes < 4096 || c.MaxLineBytes > 64<<20 {
		bad("max_line_bytes", "must be between 4096 and 67108864")
	}
	for i, f := range c.RefreshFamilies {
		if _, _, ok := strings.Cut(f, " "); !ok || !safeToken.MatchString(strings.ReplaceAll(f, " ", "")) {
			bad(fmt.Sprintf("refresh_families[%d]", i), "must be \"<afi> <safi>\", not %q", f)
		}
	}
	if c.Commands.Enabled {
		if c.Commands.NATS.URL == "" {
			bad("commands.nats.url", "must be set when commands are enabled")
		}
		if c.Commands.Subject != "" && strings.ContainsAny(c.Commands.Subject, " \t*>") {
			bad("commands.subject", "must be a literal NATS subject, not %q", c.Commands.Subject)
		}
		c.Commands.NATS.Validate("commands.nats", false, bad)
	}
	if c.Commands.AckTimeout < 10*time.Millisecond || c.Commands.AckTimeout > 10*time.Minute {
		bad("commands.ack_timeout", "must be between 10ms and 10m")
	}
	if err := c.Policy.validate(bad); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (p PolicyConfig) validate(bad func(key, format string, a ...any)) error {
	for i, v := range p.AllowedVerbs {
		ok := false
		for _, a := range allVerbs {
			ok = ok || v == a
		}
		if !ok {
			bad(fmt.Sprintf("policy.allowed_verbs[%d]", i), "unknown verb %q (want one of %s)", v, strings.Join(allVerbs, ", "))
		}
	}
	for i, s := range p.AllowedPrefixes {
		if _, err := parseAllowedPrefix(s); err != nil {
			bad(fmt.Sprintf("policy.allowed_prefixes[%d]", i), "%v", err)
		}
	}
	for i, s := range p.AllowedNeighbors {
		if _, err := netip.ParseAddr(s); err != nil {
			bad(fmt.Sprintf("policy.allowed_neighbors[%d]", i), "invalid address %q", s)
		}
	}
	for i, s := range p.AllowedNextHops {
		if s == "self" {
			continue
		}
		if _, err := netip.ParsePrefix(s); err != nil {
			bad(fmt.Sprintf("policy.allowed_next_hops[%d]", i), "invalid CIDR %q (or \"self\")", s)
		}
	}
	if p.MaxPrefixLengthV4 < 0 || p.MaxPrefixLengthV4 > 32 {
		bad("policy.max_prefix_length_v4", "must be between 0 and 32")
	}
	if p.MaxPrefixLengthV6 < 0 || p.MaxPrefixLengthV6 > 128 {
		bad("policy.max_prefix_length_v6", "must be between 0 and 128")
	}
	if p.MaxRoutes < 0 {
		bad("policy.max_routes", "must not be negative")
	}
	if p.RatePerSecond <= 0 {
		bad("policy.rate_per_second", "must be positive")
	}
	if p.RateBurst < 1 {
		bad("policy.rate_burst", "must be at least 1")
	}
	return nil
}
