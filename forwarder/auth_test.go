package forwarder

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

func TestSaramaConfigProducerGuarantees(t *testing.T) {
	c := DefaultConfig().Kafka
	c.Compression = "zstd"
	sc, err := SaramaConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	if !sc.Producer.Idempotent || sc.Producer.RequiredAcks != sarama.WaitForAll || sc.Net.MaxOpenRequests != 1 ||
		sc.Producer.Retry.Max < 1 || !sc.Producer.Return.Successes || !sc.Producer.Return.Errors ||
		sc.Producer.Compression != sarama.CompressionZSTD || sc.Metadata.AllowAutoTopicCreation {
		t.Errorf("producer config lacks a delivery guarantee: %+v", sc.Producer)
	}
}

// The SCRAM client sarama gets completes a real conversation with a SCRAM
// server for the same credentials, and fails with a wrong password.
func TestSCRAMClientConversation(t *testing.T) {
	for _, tt := range []struct {
		password string
		ok       bool
	}{{"s3cret", true}, {"wrong", false}} {
		c := DefaultConfig().Kafka
		c.SASL = SASL{Mechanism: "SCRAM-SHA-512", User: "edge", Password: tt.password}
		sc, err := SaramaConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		if !sc.Net.SASL.Enable || sc.Net.SASL.Mechanism != sarama.SASLTypeSCRAMSHA512 {
			t.Fatalf("sasl not configured: %+v", sc.Net.SASL)
		}
		client := sc.Net.SASL.SCRAMClientGeneratorFunc()
		creds, err := scram.HashGeneratorFcn(sha512.New).NewClient("edge", "s3cret", "")
		if err != nil {
			t.Fatal(err)
		}
		stored := creds.GetStoredCredentials(scram.KeyFactors{Salt: "saltsalt", Iters: 4096})
		srv, err := scram.HashGeneratorFcn(sha512.New).NewServer(func(string) (scram.StoredCredentials, error) { return stored, nil })
		if err != nil {
			t.Fatal(err)
		}
		conv := srv.NewConversation()
		if err := client.Begin("edge", tt.password, ""); err != nil {
			t.Fatal(err)
		}
		msg, err := client.Step("")
		var convErr error
		for err == nil && !client.Done() {
			var challenge string
			challenge, convErr = conv.Step(msg)
			if convErr != nil {
				break
			}
			msg, err = client.Step(challenge)
		}
		ok := err == nil && convErr == nil && conv.Valid()
		if ok != tt.ok {
			t.Errorf("password %q: conversation ok=%v (client %v, server %v), want %v", tt.password, ok, err, convErr, tt.ok)
		}
	}
}

func TestBuildTLS(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kafka.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, DNSNames: []string{"kafka.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	keyFile := filepath.Join(dir, "key.pem")
	must(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))

	tc, err := buildTLS(TLSConfig{Enabled: true, CAFile: ca, CertFile: ca, KeyFile: keyFile, ServerName: "kafka.test"})
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.ServerName != "kafka.test" || tc.InsecureSkipVerify {
		t.Errorf("tls config incomplete: %+v", tc)
	}
	if _, err := buildTLS(TLSConfig{Enabled: true, CAFile: keyFile}); err == nil {
		t.Error("a CA file without certificates was accepted")
	}
	if tc, _ := buildTLS(TLSConfig{}); tc != nil {
		t.Error("disabled TLS built a config")
	}
	c := DefaultConfig().Kafka
	c.TLS = TLSConfig{Enabled: true, CAFile: ca}
	sc, err := SaramaConfig(c)
	if err != nil || !sc.Net.TLS.Enable || sc.Net.TLS.Config.RootCAs == nil {
		t.Errorf("sarama tls not enabled: %v", err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
