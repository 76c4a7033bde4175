package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/bgpedge/bgpedge/internal/natsconn"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/internal/tlsconf"
)

// TestFleetSecuredNATS: the channel that reconfigures the agent takes the
// same NATS block as the forwarder, so it runs over mutual TLS or with an
// nkey. Against an embedded nats-server that requires one of them, a
// document published by `bgpedge fleet push` (with the same credentials as
// flags) applies and its status is reported; a wrong CA, client
// certificate or nkey fails with an error that names the cause.
func TestFleetSecuredNATS(t *testing.T) {
	dir := t.TempDir()
	pki := testenv.NewPKI(t, dir)
	seedFile, pub := writeNKey(t, dir, "edge.nk")
	otherSeedFile, _ := writeNKey(t, dir, "other.nk")

	tests := []struct {
		name    string
		server  func(*server.Options)
		good    natsconn.Config
		flags   []string // the same credentials for `bgpedge fleet push`
		bad     []natsconn.Config
		badWant []string
	}{
		{
			name: "mutual TLS",
			server: func(o *server.Options) {
				o.TLS, o.TLSVerify, o.TLSTimeout = true, true, 5
				o.TLSConfig = pki.ServerTLS(t)
			},
			good:  natsconn.Config{TLS: tlsconf.Config{Enabled: true, CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}},
			flags: []string{"--tls-ca", pki.CA, "--tls-cert", pki.ClientCert, "--tls-key", pki.ClientKey},
			bad: []natsconn.Config{
				{TLS: tlsconf.Config{Enabled: true, CAFile: pki.OtherCA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}},
				{TLS: tlsconf.Config{Enabled: true, CAFile: pki.CA, CertFile: pki.OtherClientCert, KeyFile: pki.OtherClientKey}},
				{TLS: tlsconf.Config{Enabled: true, CAFile: pki.CA, CertFile: filepath.Join(dir, "missing.pem"), KeyFile: pki.ClientKey}},
			},
			badWant: []string{"certificate signed by unknown authority", "tls", "missing.pem"},
		},
		{
			name:    "nkey",
			server:  func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} },
			good:    natsconn.Config{NKeySeedFile: seedFile},
			flags:   []string{"--nkey", seedFile},
			bad:     []natsconn.Config{{NKeySeedFile: otherSeedFile}, {NKeySeedFile: filepath.Join(dir, "missing.nk")}},
			badWant: []string{"authorization violation", "missing.nk"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := testenv.StartNATS(t, tt.server)
			url := n.URL()
			if strings.HasPrefix(tt.name, "mutual") {
				url = strings.Replace(url, "nats://", "tls://", 1)
			}
			for i, bad := range tt.bad {
				bad.URL = url
				nc, err := fleetConnect(FleetConfig{NATS: bad}, "test")
				if err == nil {
					nc.Close()
					t.Fatalf("bad connection %d (%+v) connected", i, bad)
				}
				if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tt.badWant[i])) {
					t.Errorf("bad connection %d: %v; want it to name %q", i, err, tt.badWant[i])
				}
			}

			cfg := testConfig(t)
			cfg.Agent.ID = "edge-sec"
			cfg.Fleet = DefaultFleetConfig()
			cfg.Fleet.Enabled, cfg.Fleet.Group = true, "pop-sec"
			cfg.Fleet.NATS = tt.good
			cfg.Fleet.NATS.URL = url
			local := filepath.Join(t.TempDir(), "bgpedge.yaml")
			writeConfig(t, local, cfg)
			a, _, level, _ := runFakeAgent(t, cfg)
			w := &fleetWatcher{cfg: cfg.Fleet, agentID: cfg.Agent.ID, src: &configSource{opts: LoadOptions{File: local, FileRequired: true}},
				dir: cfg.Agent.StateDir, apply: a.Apply, log: testLogger(t)}
			startWatcher(t, w.run)

			doc := filepath.Join(t.TempDir(), "doc.yaml")
			if err := os.WriteFile(doc, []byte("log:\n  level: error\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := push(t, url, append(tt.flags, "--group", "pop-sec", "--file", doc)...); err != nil {
				t.Fatalf("fleet push: %v\n%s", err, out)
			}
			status := fleetKVWith(t, cfg.Fleet, "bgpedge-fleet-status")
			testenv.Eventually(t, 20*time.Second, "document applied and reported", func() bool {
				st := readStatus(t, status, "edge-sec")
				return st.State == FleetApplied && st.Key == "group.pop-sec" && level.Level() == slog.LevelError
			})
		})
	}
}

// TestRenamedNATSKeysRejected: a file written for an earlier version, with
// the fleet's or the exaBGP commands' old NATS keys, fails validation with
// the key to use instead.
func TestRenamedNATSKeysRejected(t *testing.T) {
	for old, want := range map[string]string{
		"fleet:\n  url: nats://127.0.0.1:4222\n":                       "fleet.url: renamed: use fleet.nats.url",
		"fleet:\n  creds_file: /etc/bgpedge/fleet.creds\n":             "fleet.creds_file: renamed: use fleet.nats.creds_file",
		"fleet:\n  token: s3cret\n":                                    "fleet.token: renamed: use fleet.nats.token",
		"exabgp:\n  commands:\n    nats:\n      tls_ca: /ca.pem\n":     "exabgp.commands.nats.tls_ca: renamed: use exabgp.commands.nats.tls.ca_file",
		"exabgp:\n  commands:\n    nats:\n      tls_cert: /c.pem\n":    "exabgp.commands.nats.tls_cert: renamed: use exabgp.commands.nats.tls.cert_file",
		"exabgp:\n  commands:\n    nats:\n      tls_key: /k.pem\n":     "exabgp.commands.nats.tls_key: renamed: use exabgp.commands.nats.tls.key_file",
		"exabgp:\n  commands:\n    nats:\n      nkey_file: /edge.nk\n": "exabgp.commands.nats.nkey_file: renamed: use exabgp.commands.nats.nkey_seed_file",
	} {
		p := filepath.Join(t.TempDir(), "bgpedge.yaml")
		if err := os.WriteFile(p, []byte(old), 0o600); err != nil {
			t.Fatal(err)
		}
		_, stderr, code := runCLI(t, "config", "validate", "--config", p)
		if code == 0 || !strings.Contains(stderr, want) {
			t.Errorf("%q: exit %d, %q; want it to say %q", old, code, stderr, want)
		}
	}
}

func writeNKey(t *testing.T, dir, name string) (seedFile, pub string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	if pub, err = kp.PublicKey(); err != nil {
		t.Fatal(err)
	}
	seedFile = filepath.Join(dir, name)
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return seedFile, pub
}
