// Package natsconn is the one NATS connection block of the configuration —
// `forwarder.nats`, `exabgp.commands.nats` and `fleet.nats` take the same
// keys — and the client options it makes. What each user does on the
// connection (streams, buckets, subjects) stays beside the block, with its
// user.
package natsconn

import (
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/bgpedge/bgpedge/internal/tlsconf"
)

// Config is a NATS connection: the servers, one way to authenticate, TLS.
type Config struct {
	// URL of the NATS servers (comma-separated).
	URL string `mapstructure:"url"`
	// At most one of: a JWT credentials file, an nkey seed file, a user and
	// password, a token.
	CredsFile    string `mapstructure:"creds_file"`
	NKeySeedFile string `mapstructure:"nkey_seed_file"`
	User         string `mapstructure:"user"`
	Password     string `mapstructure:"password"`
	Token        string `mapstructure:"token"`
	// TLS, mutual when cert_file and key_file are set.
	TLS tlsconf.Config `mapstructure:"tls"`
}

// Validate reports, through bad, what is wrong with the block at key (e.g.
// "fleet.nats"); a URL is checked only when required.
func (c Config) Validate(key string, requireURL bool, bad func(key, format string, args ...any)) {
	if requireURL && c.URL == "" {
		bad(key+".url", "is required")
	}
	auth := 0
	for _, s := range []string{c.CredsFile, c.NKeySeedFile, c.Token, c.User} {
		if s != "" {
			auth++
		}
	}
	if auth > 1 {
		bad(key+".creds_file", "set only one of creds_file, nkey_seed_file, user/password or token")
	}
	if c.Password != "" && c.User == "" {
		bad(key+".user", "is required with a password")
	}
	c.TLS.Validate(key+".tls", bad)
}

// Options are the client options for the block: name, authentication and
// TLS. Errors name the file that could not be used.
func (c Config) Options(name string) ([]nats.Option, error) {
	opts := []nats.Option{nats.Name(name)}
	switch {
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NKeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey seed %s: %w", c.NKeySeedFile, err)
		}
		opts = append(opts, o)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	t, err := c.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("nats tls: %w", err)
	}
	if t != nil {
		opts = append(opts, nats.Secure(t))
	}
	return opts, nil
}
