package agent

import "github.com/bgpedge/bgpedge/internal/natsconn"

// stringFlags is the part of a cobra flag set natsFlags uses.
type stringFlags interface {
	StringVar(p *string, name, value, usage string)
}

// natsFlags registers the flags of a NATS connection for the commands that
// reach central (fleet, routes): the same choices as the configuration's
// NATS block.
func natsFlags(fs stringFlags, c *natsconn.Config, defaultURL string) {
	fs.StringVar(&c.URL, "nats", defaultURL, "NATS URL")
	fs.StringVar(&c.CredsFile, "creds", "", "NATS credentials file")
	fs.StringVar(&c.NKeySeedFile, "nkey", "", "NATS nkey seed file")
	fs.StringVar(&c.User, "user", "", "NATS user")
	fs.StringVar(&c.Password, "password", "", "NATS password")
	fs.StringVar(&c.Token, "token", "", "NATS token")
	fs.StringVar(&c.TLS.CAFile, "tls-ca", "", "CA bundle for the NATS server (turns TLS on)")
	fs.StringVar(&c.TLS.CertFile, "tls-cert", "", "client certificate (turns TLS on)")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", "", "client key")
	fs.StringVar(&c.TLS.ServerName, "tls-server-name", "", "server name to verify (turns TLS on)")
}

// natsFlagsTLS turns TLS on when a TLS flag was given: on the command line
// there is no tls.enabled to set.
func natsFlagsTLS(c natsconn.Config) natsconn.Config {
	c.TLS.Enabled = c.TLS.CAFile != "" || c.TLS.CertFile != "" || c.TLS.ServerName != ""
	return c
}
