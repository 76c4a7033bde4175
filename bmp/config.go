package bmp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Config is the `bmp:` section of the agent's configuration.
type Config struct {
	// Listen is the TCP address routers connect to.
	Listen string `mapstructure:"listen"`
	// Allow lists the router addresses (CIDR prefixes or bare IPs) that may
	// open a session. Empty allows every address: BMP stations usually sit
	// behind a management network and routers are configured by the same
	// operator, so refusing everything out of the box would only make the
	// first deployment fail silently. Restrict it (and firewall the port)
	// wherever the listen address is reachable from untrusted networks.
	Allow []string `mapstructure:"allow"`
	// MaxSessions bounds concurrent router sessions; further connections are
	// refused (closed right after accept) and counted.
	MaxSessions int `mapstructure:"max_sessions"`
	// MaxPeers bounds the peers one session may have up at once (a peer is
	// its type, distinguisher and address). It is checked after each spooled
	// batch: a session beyond it is closed after spooling what it sent, so a
	// router or client flooding Peer Ups (or routes of peers without one,
	// which count as up) cannot grow the session's memory and
	// its journal without bound (one batch, batch_messages at most, may
	// overshoot).
	MaxPeers int `mapstructure:"max_peers"`
	// MaxMessageBytes is the largest BMP message accepted; a longer length
	// field closes the session as a framing error.
	MaxMessageBytes int `mapstructure:"max_message_bytes"`
	// ReadBufferBytes is the size a session's framing buffer grows to while
	// the router streams (reads keep filling it). Larger buffers mean larger
	// spool batches. A session starts with a 16 KiB buffer when the router
	// sends its first bytes; growth beyond that draws on BufferBudgetBytes.
	ReadBufferBytes int `mapstructure:"read_buffer_bytes"`
	// BufferBudgetBytes bounds, across all sessions, the read-buffer memory
	// above each session's first 16 KiB: buffers grown for throughput and
	// for messages larger than the buffer. Read buffers therefore never take
	// more than BufferBudgetBytes + max_sessions × 16 KiB. A session denied
	// budget for throughput keeps its buffer; one that needs more to hold a
	// message waits (only it stops reading) — see partial_timeout.
	BufferBudgetBytes int `mapstructure:"buffer_budget_bytes"`
	// PartialTimeout closes a session whose message has not arrived whole
	// this long after its first byte (time the session itself waits for the
	// spool or for budget does not count): a stalled, trickling or hostile
	// client must not keep buffer memory. It also bounds the wait for budget: a session
	// that cannot get budget to hold a message within twice this time (long
	// enough for stalled sessions holding it to be closed) is closed.
	PartialTimeout time.Duration `mapstructure:"partial_timeout"`
	// SocketReceiveBufferBytes sets SO_RCVBUF on each session; 0 keeps the
	// kernel's autotuning. What the kernel holds for a session (about twice
	// this) is lost with the read batch when bgpedge crashes: routers do not
	// resend. Autotuning grows it up to net.ipv4.tcp_rmem's maximum (6 MiB
	// on most distributions, 32 MiB on some), so the default bounds it.
	SocketReceiveBufferBytes int `mapstructure:"socket_receive_buffer_bytes"`
	// BatchMessages bounds how many messages one spool append carries.
	BatchMessages int `mapstructure:"batch_messages"`
	// TCPKeepalive is the keepalive idle time and probe interval; 0 disables
	// keepalives. It is what detects a router that vanished without a FIN.
	TCPKeepalive time.Duration `mapstructure:"tcp_keepalive"`
	// InitiationTimeout is how long a new connection may take to deliver its
	// first whole message, so a client that connects and never sends does
	// not hold a session slot forever.
	InitiationTimeout time.Duration `mapstructure:"initiation_timeout"`
	// IdleTimeout closes a session that sent nothing for this long; 0 (the
	// default) never does, because a BMP session without stats reporting can
	// legitimately be silent for hours. TCP keepalive covers dead routers.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
}

// Bounds of the configurable values.
const (
	minReadBuffer = 64 << 10
	maxReadBuffer = 64 << 20
	maxSessions   = 1 << 20
	maxBatch      = 1 << 20

	// initialReadBuffer is every session's first buffer, granted outside the
	// budget so a session can always receive ordinary messages (BGP UPDATEs
	// are at most 4 KiB unless extended) even when the budget is exhausted.
	initialReadBuffer = 16 << 10
)

// DefaultConfig returns the configuration used when a key is not set.
func DefaultConfig() Config {
	return Config{
		Listen:                   ":11019",
		MaxSessions:              1000,
		MaxPeers:                 16384,
		MaxMessageBytes:          DefaultMaxMessageBytes,
		ReadBufferBytes:          256 << 10,
		BufferBudgetBytes:        32 << 20,
		PartialTimeout:           60 * time.Second,
		BatchMessages:            4096,
		SocketReceiveBufferBytes: 512 << 10,
		TCPKeepalive:             30 * time.Second,
		InitiationTimeout:        60 * time.Second,
	}
}

// Validate checks the configuration without side effects. Errors name the
// full configuration key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("bmp.%s: "+format, append([]any{key}, args...)...))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port: %v", c.Listen, err)
	}
	for i, a := range c.Allow {
		if _, err := parseAllow(a); err != nil {
			bad(fmt.Sprintf("allow[%d]", i), "%v", err)
		}
	}
	if c.MaxSessions < 1 || c.MaxSessions > maxSessions {
		bad("max_sessions", "must be between 1 and %d", maxSessions)
	}
	if c.MaxPeers < 1 || c.MaxPeers > 1<<20 {
		bad("max_peers", "must be between 1 and %d", 1<<20)
	}
	if c.MaxMessageBytes < HeaderLen || c.MaxMessageBytes > MaxMessageBytesLimit {
		bad("max_message_bytes", "must be between %d and %d", HeaderLen, MaxMessageBytesLimit)
	}
	if c.ReadBufferBytes < minReadBuffer || c.ReadBufferBytes > maxReadBuffer {
		bad("read_buffer_bytes", "must be between %d and %d", minReadBuffer, maxReadBuffer)
	}
	// One message of the largest size must fit in the budget, or a router
	// sending it would wait until closed.
	if need := max(c.MaxMessageBytes, c.ReadBufferBytes); c.BufferBudgetBytes < need {
		bad("buffer_budget_bytes", "must be at least max_message_bytes and read_buffer_bytes (%d)", need)
	}
	if c.SocketReceiveBufferBytes < 0 || c.SocketReceiveBufferBytes > maxReadBuffer {
		bad("socket_receive_buffer_bytes", "must be between 0 (kernel default) and %d", maxReadBuffer)
	}
	if c.BatchMessages < 1 || c.BatchMessages > maxBatch {
		bad("batch_messages", "must be between 1 and %d", maxBatch)
	}
	if c.TCPKeepalive < 0 {
		bad("tcp_keepalive", "must not be negative (0 disables)")
	} else if c.TCPKeepalive > 0 && c.TCPKeepalive < time.Second {
		bad("tcp_keepalive", "must be at least 1s (0 disables)")
	}
	if c.InitiationTimeout <= 0 {
		bad("initiation_timeout", "must be positive")
	}
	if c.PartialTimeout <= 0 {
		bad("partial_timeout", "must be positive")
	}
	if c.IdleTimeout < 0 {
		bad("idle_timeout", "must not be negative (0 disables)")
	}
	return errors.Join(errs...)
}

// parseAllow accepts a CIDR prefix or a bare address (a host prefix).
func parseAllow(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR prefix nor an IP address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
