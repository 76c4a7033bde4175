package exabgp

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/internal/tlsconf"
)

// TestConnectNATSAuth: each authentication option reaches an embedded
// nats-server that requires it, and wrong credentials do not connect.
func TestConnectNATSAuth(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(t.TempDir(), "agent.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(t.TempDir(), "other.nk")
	if err := os.WriteFile(otherFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		srv  natsserver.Options
		good NATSConfig
		bad  NATSConfig
	}{
		{"token", natsserver.Options{Authorization: "s3cret"}, NATSConfig{Token: "s3cret"}, NATSConfig{Token: "wrong"}},
		{"user/password", natsserver.Options{Username: "edge1", Password: "pw"}, NATSConfig{User: "edge1", Password: "pw"}, NATSConfig{User: "edge1", Password: "nope"}},
		{"nkey", natsserver.Options{Nkeys: []*natsserver.NkeyUser{{Nkey: pub}}}, NATSConfig{NKeySeedFile: seedFile}, NATSConfig{NKeySeedFile: otherFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.srv
			o.Host, o.Port, o.NoLog, o.NoSigs = "127.0.0.1", -1, true, true
			ns, err := natsserver.NewServer(&o)
			if err != nil {
				t.Fatal(err)
			}
			go ns.Start()
			if !ns.ReadyForConnections(10 * time.Second) {
				t.Fatal("nats-server not ready")
			}
			t.Cleanup(ns.Shutdown)
			log := slog.New(slog.DiscardHandler)

			good := tt.good
			good.URL = ns.ClientURL()
			nc, err := ConnectNATS(good, "test", log)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			commandRoundTrip(t, nc, "x")

			bad := tt.bad
			bad.URL = ns.ClientURL()
			nb, err := ConnectNATS(bad, "test", log)
			if err != nil {
				return // refused outright
			}
			defer nb.Close()
			testenv.Eventually(t, 5*time.Second, "bad credentials rejected", func() bool {
				return nb.LastError() != nil
			})
			if nb.IsConnected() {
				t.Fatal("connected with wrong credentials")
			}
		})
	}
}

// TestConnectNATSMutualTLS: a private CA, a server certificate and a client
// certificate the server requires, in the NATS block every NATS user of
// bgpedge shares; a wrong CA or a missing certificate file fails with an
// error that names it.
func TestConnectNATSMutualTLS(t *testing.T) {
	pki := testenv.NewPKI(t, t.TempDir())
	n := testenv.StartNATS(t, func(o *natsserver.Options) {
		o.JetStream = false
		o.TLS, o.TLSVerify, o.TLSTimeout = true, true, 5
		o.TLSConfig = pki.ServerTLS(t)
	})
	url := strings.Replace(n.URL(), "nats://", "tls://", 1)
	log := slog.New(slog.DiscardHandler)

	nc, err := ConnectNATS(NATSConfig{URL: url, TLS: tlsconf.Config{Enabled: true, CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}}, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	testenv.Eventually(t, 10*time.Second, "connected with the client certificate", nc.IsConnected)

	for _, tt := range []struct {
		tls  tlsconf.Config
		want string
	}{
		{tlsconf.Config{Enabled: true, CAFile: pki.OtherCA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "certificate signed by unknown authority"},
		{tlsconf.Config{Enabled: true, CAFile: pki.CA, CertFile: pki.ClientCert + ".missing", KeyFile: pki.ClientKey}, ".missing"},
	} {
		nb, err := ConnectNATS(NATSConfig{URL: url, TLS: tt.tls}, "test", log, nats.RetryOnFailedConnect(false))
		if err == nil {
			nb.Close()
			t.Fatalf("connected with %+v", tt.tls)
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("connect with %+v: %v; want it to name %q", tt.tls, err, tt.want)
		}
	}

	nb, err := ConnectNATS(NATSConfig{URL: url, TLS: tlsconf.Config{Enabled: true, CAFile: pki.CA}}, "test", log)
	if err != nil {
		return
	}
	defer nb.Close()
	testenv.Eventually(t, 10*time.Second, "refused without a client certificate", func() bool { return nb.LastError() != nil })
	if nb.IsConnected() {
		t.Fatal("connected without a client certificate")
	}
}
