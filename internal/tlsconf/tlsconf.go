// Package tlsconf is the TLS block of the configuration, shared by every
// client bgpedge dials (Kafka, the NATS connections), and the tls.Config it
// makes.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Config is a `tls:` block.
type Config struct {
	Enabled            bool   `mapstructure:"enabled"`
	CAFile             string `mapstructure:"ca_file"`
	CertFile           string `mapstructure:"cert_file"`
	KeyFile            string `mapstructure:"key_file"`
	ServerName         string `mapstructure:"server_name"`
	InsecureSkipVerify bool   `mapstructure:"insecure_skip_verify"`
}

// Validate reports, through bad, what is wrong with the block at key
// (e.g. "nats.tls"), without touching the files.
func (c Config) Validate(key string, bad func(key, format string, args ...any)) {
	if (c.CertFile == "") != (c.KeyFile == "") {
		bad(key+".cert_file", "cert_file and key_file must be set together")
	}
	if !c.Enabled && (c.CAFile != "" || c.CertFile != "" || c.ServerName != "" || c.InsecureSkipVerify) {
		bad(key+".enabled", "must be true when other TLS settings are given")
	}
}

// Build reads the files and returns the client's tls.Config, or nil when
// TLS is off. Errors name the file.
func (c Config) Build() (*tls.Config, error) {
	if !c.Enabled {
		return nil, nil
	}
	t := &tls.Config{
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // an explicit operator choice
		MinVersion:         tls.VersionTLS12,
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca file %s: no certificates", c.CAFile)
		}
		t.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %s: %w", c.CertFile, err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}
