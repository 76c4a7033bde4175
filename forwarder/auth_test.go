package forwarder

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/xdg-go/scram"

	"github.com/bgpedge/bgpedge/internal/testenv"
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

	tc, err := TLSConfig{Enabled: true, CAFile: ca, CertFile: ca, KeyFile: keyFile, ServerName: "kafka.test"}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.ServerName != "kafka.test" || tc.InsecureSkipVerify {
		t.Errorf("tls config incomplete: %+v", tc)
	}
	if _, err := (TLSConfig{Enabled: true, CAFile: keyFile}).Build(); err == nil {
		t.Error("a CA file without certificates was accepted")
	}
	if tc, _ := (TLSConfig{}).Build(); tc != nil {
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

// TestKafkaSecured drives the real Kafka sink, through the forwarder as the
// agent builds it, against a real broker with TLS, mutual TLS and SASL
// (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 over TLS) listeners, reads every record
// back with an independent client on the same listener, and checks that bad
// credentials, an unknown CA, a wrong server name and a missing client
// certificate fail the connect with an error that says so.
func TestKafkaSecured(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private secured broker; skipped with -short")
	}
	t.Parallel()
	sec := testenv.KafkaControlWith(t, testenv.KafkaOptions{Secure: true}).Security(t)
	caTLS := TLSConfig{Enabled: true, CAFile: sec.CAFile}
	withName := func(c TLSConfig, name string) TLSConfig { c.ServerName = name; return c }
	mTLS := TLSConfig{Enabled: true, CAFile: sec.CAFile, CertFile: sec.ClientCert, KeyFile: sec.ClientKey, ServerName: "localhost"}
	sasl := func(mech string) SASL { return SASL{Mechanism: mech, User: sec.User, Password: sec.Password} }
	otherCA := writeOtherCA(t)

	t.Run("deliver", func(t *testing.T) {
		for _, tt := range []struct {
			name   string
			broker string
			tls    TLSConfig
			sasl   SASL
		}{
			{"tls-ca-server-name", sec.SSL, withName(caTLS, "localhost"), SASL{}},
			// No server_name: the certificate is checked against the
			// broker's address, an IP SAN.
			{"tls-ca-ip", sec.SSL, caTLS, SASL{}},
			{"mtls-client-cert", sec.MTLS, mTLS, SASL{}},
			{"sasl-plain-tls", sec.SASLSSL, withName(caTLS, "localhost"), sasl("PLAIN")},
			{"scram-sha-256-tls", sec.SASLSSL, caTLS, sasl("SCRAM-SHA-256")},
			// Lower case, as an operator may write it.
			{"scram-sha-512-tls", sec.SASLSSL, caTLS, sasl("scram-sha-512")},
		} {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				cfg := testConfig(t, []string{tt.broker})
				cfg.Kafka.TLS, cfg.Kafka.SASL = tt.tls, tt.sasl
				cfg.Topics.Ensure = []string{StreamBMPRaw}
				deliverSecured(t, cfg, independentClient(t, tt.tls, tt.sasl))
			})
		}
	})

	t.Run("refused", func(t *testing.T) {
		wrong := func(mech string) SASL { s := sasl(mech); s.Password += "-wrong"; return s }
		for _, tt := range []struct {
			name   string
			broker string
			tls    TLSConfig
			sasl   SASL
			want   []string // every one must be in the error
		}{
			{"plain-wrong-password", sec.SASLSSL, caTLS, wrong("PLAIN"), []string{"authentication failed", "forwarder.kafka.sasl"}},
			{"scram-sha-256-wrong-password", sec.SASLSSL, caTLS, wrong("SCRAM-SHA-256"), []string{"authentication failed", "forwarder.kafka.sasl"}},
			{"scram-sha-512-unknown-user", sec.SASLSSL, caTLS, SASL{Mechanism: "SCRAM-SHA-512", User: "nobody", Password: sec.Password}, []string{"authentication failed"}},
			{"unknown-ca", sec.SSL, TLSConfig{Enabled: true, CAFile: otherCA}, SASL{}, []string{"kafka tls", "unknown authority"}},
			{"unknown-ca-sasl", sec.SASLSSL, TLSConfig{Enabled: true, CAFile: otherCA}, sasl("SCRAM-SHA-256"), []string{"kafka tls", "unknown authority"}},
			{"wrong-server-name", sec.SSL, withName(caTLS, "kafka.invalid"), SASL{}, []string{"kafka tls", "kafka.invalid"}},
			{"mtls-without-client-cert", sec.MTLS, withName(caTLS, "localhost"), SASL{}, []string{"kafka tls", "certificate"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				cfg := testConfig(t, []string{tt.broker})
				cfg.Kafka.TLS, cfg.Kafka.SASL = tt.tls, tt.sasl
				cfg.Kafka.RetryBackoff = 50 * time.Millisecond
				sink := NewKafkaSink(cfg.Kafka, cfg.Topics, testLogger(t))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				err := sink.Connect(ctx)
				if err == nil {
					_ = sink.Close(ctx)
					t.Fatal("connect succeeded")
				}
				if ctx.Err() != nil {
					t.Fatalf("connect did not fail by itself before the deadline: %v", err)
				}
				t.Logf("connect: %v", err)
				for _, w := range tt.want {
					if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(w)) {
						t.Errorf("connect error %q does not mention %q", err, w)
					}
				}
				// Still an outage to the forwarder: it retries and may
				// fail over, as for an unreachable broker.
				if !errors.Is(err, ErrUnavailable) {
					t.Errorf("connect error %q does not wrap ErrUnavailable", err)
				}
			})
		}
	})

	// The forwarder keeps a refused Kafka unhealthy: nothing is acknowledged,
	// no sink is active, and each attempt counts as a connect error.
	t.Run("forwarder-unhealthy", func(t *testing.T) {
		cfg := testConfig(t, []string{sec.SASLSSL})
		cfg.Kafka.TLS = caTLS
		cfg.Kafka.SASL = SASL{Mechanism: "SCRAM-SHA-512", User: sec.User, Password: "not-" + sec.Password}
		src := newMemSource()
		src.Append(bmpRecord("192.0.2.1", 100))
		reg := prometheus.NewRegistry()
		f, err := New(cfg, src, rawBMP, testLogger(t), reg)
		if err != nil {
			t.Fatal(err)
		}
		stop := startForwarder(t, f)
		connectErrors := func() float64 { return testutil.ToFloat64(f.m.errors.WithLabelValues(SinkKafka, "connect")) }
		testenv.Eventually(t, 30*time.Second, "two failed kafka connects", func() bool { return connectErrors() >= 2 })
		if a := f.ActiveSink(); a != SinkNone {
			t.Errorf("active sink %q with a wrong password", a)
		}
		stop()
		if src.Acked() != 0 {
			t.Errorf("acked through %d with a wrong password", src.Acked())
		}
	})
}

// deliverSecured forwards a few records with distinct payloads through the
// real sink and reads them back with client; ids and payloads must match.
func deliverSecured(t *testing.T, cfg Config, client *sarama.Config) {
	t.Helper()
	const n = 25
	src := newMemSource()
	want := map[string][]byte{}
	for i := range n {
		rec := bmpRecord(fmt.Sprintf("192.0.2.%d", i%4+1), 64+i)
		rec.Payload[6] = byte(i) // distinct, beyond the header
		seq := src.Append(rec)
		want[MessageID(cfg.AgentID, seq, -1)] = rec.Payload
	}
	f, err := New(cfg, src, rawBMP, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	stop := startForwarder(t, f)
	testenv.Eventually(t, 30*time.Second, "every record acknowledged by kafka", func() bool { return src.Acked() == n })
	stop()

	msgs := testenv.ConsumeAllWith(t, client, cfg.Kafka.Brokers, cfg.Topics.Topic(StreamBMPRaw), n, 30*time.Second)
	for _, m := range msgs {
		id := headerValue(m.Headers, HeaderID)
		w, ok := want[id]
		if !ok {
			t.Errorf("unexpected or duplicate message id %q", id)
			continue
		}
		if !bytes.Equal(m.Value, w) {
			t.Errorf("message %s: payload %x, want %x", id, m.Value, w)
		}
		delete(want, id)
	}
	if len(want) != 0 {
		t.Errorf("%d records missing", len(want))
	}
}

// independentClient is a consumer configuration for a secured listener built
// straight from the files, not through the sink's own config builder.
func independentClient(t *testing.T, tc TLSConfig, s SASL) *sarama.Config {
	t.Helper()
	cfg := testenv.SaramaConfig(t)
	pemBytes, err := os.ReadFile(tc.CAFile)
	must(t, err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("no certificate in %s", tc.CAFile)
	}
	c := &tls.Config{RootCAs: pool, ServerName: tc.ServerName, MinVersion: tls.VersionTLS12}
	if tc.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(tc.CertFile, tc.KeyFile)
		must(t, err)
		c.Certificates = []tls.Certificate{cert}
	}
	cfg.Net.TLS.Enable, cfg.Net.TLS.Config = true, c
	if s.Mechanism != "" {
		mech := sarama.SASLMechanism(strings.ToUpper(s.Mechanism))
		cfg.Net.SASL.Enable, cfg.Net.SASL.Handshake = true, true
		cfg.Net.SASL.Mechanism, cfg.Net.SASL.User, cfg.Net.SASL.Password = mech, s.User, s.Password
		switch mech {
		case sarama.SASLTypeSCRAMSHA256:
			cfg.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA256} }
		case sarama.SASLTypeSCRAMSHA512:
			cfg.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA512} }
		}
	}
	return cfg
}

// writeOtherCA writes a CA certificate that signed nothing the broker has.
func writeOtherCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "some other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	path := filepath.Join(t.TempDir(), "other-ca.pem")
	must(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return path
}
