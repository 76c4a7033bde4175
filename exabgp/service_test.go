package exabgp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/bgpedge/bgpedge/internal/testenv"
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
		{"nkey", natsserver.Options{Nkeys: []*natsserver.NkeyUser{{Nkey: pub}}}, NATSConfig{NKeyFile: seedFile}, NATSConfig{NKeyFile: otherFile}},
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
// certificate the server requires.
func TestConnectNATSMutualTLS(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	issue := func(name string, usage x509.ExtKeyUsage, serial int64) (certFile, keyFile string, pair tls.Certificate) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
		certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		pair, err = tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return certFile, keyFile, pair
	}
	_, _, serverPair := issue("server", x509.ExtKeyUsageServerAuth, 2)
	clientCert, clientKey, _ := issue("agent", x509.ExtKeyUsageClientAuth, 3)
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, TLS: true, TLSVerify: true,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{serverPair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	url := "tls://" + ns.Addr().String()
	log := slog.New(slog.DiscardHandler)

	nc, err := ConnectNATS(NATSConfig{URL: url, TLSCA: caFile, TLSCert: clientCert, TLSKey: clientKey}, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	testenv.Eventually(t, 10*time.Second, "connected with the client certificate", nc.IsConnected)

	nb, err := ConnectNATS(NATSConfig{URL: url, TLSCA: caFile}, "test", log)
	if err != nil {
		return
	}
	defer nb.Close()
	testenv.Eventually(t, 10*time.Second, "refused without a client certificate", func() bool { return nb.LastError() != nil })
	if nb.IsConnected() {
		t.Fatal("connected without a client certificate")
	}
}
