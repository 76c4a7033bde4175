package forwarder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestNATSSecured drives the real JetStream sink against embedded
// nats-servers that each require one of the authentication methods bgpedge
// offers (token, user and password, nkey, a creds file under decentralised
// JWT auth) or mutual TLS, reads every message back, and checks that wrong
// credentials and an untrusted server certificate fail the connect with an
// error that says so.
func TestNATSSecured(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pki := testenv.NewPKI(t, dir)

	userSeed, userPub := newNKey(t, nkeys.CreateUser)
	nkeyFile := filepath.Join(dir, "user.nk")
	must(t, os.WriteFile(nkeyFile, userSeed, 0o600))
	otherSeed, _ := newNKey(t, nkeys.CreateUser)
	otherNKeyFile := filepath.Join(dir, "other.nk")
	must(t, os.WriteFile(otherNKeyFile, otherSeed, 0o600))
	operator, resolver, sysAccount, creds, strangerCreds := jwtAuth(t, dir)

	tests := []struct {
		name    string
		server  func(*server.Options)
		good    func(*NATSConfig)
		bad     func(*NATSConfig)
		badWant string // in the error of the bad connect
	}{
		{
			name:    "token",
			server:  func(o *server.Options) { o.Authorization = "s3cret-token" },
			good:    func(c *NATSConfig) { c.Token = "s3cret-token" },
			bad:     func(c *NATSConfig) { c.Token = "wrong" },
			badWant: "authorization violation",
		},
		{
			name: "user and password",
			server: func(o *server.Options) {
				o.Users = []*server.User{{Username: "edge", Password: "pw-edge"}}
			},
			good:    func(c *NATSConfig) { c.User, c.Password = "edge", "pw-edge" },
			bad:     func(c *NATSConfig) { c.User, c.Password = "edge", "nope" },
			badWant: "authorization violation",
		},
		{
			name:    "nkey",
			server:  func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: userPub}} },
			good:    func(c *NATSConfig) { c.NKeySeedFile = nkeyFile },
			bad:     func(c *NATSConfig) { c.NKeySeedFile = otherNKeyFile },
			badWant: "authorization violation",
		},
		{
			name: "creds file (JWT)",
			server: func(o *server.Options) {
				o.TrustedOperators = []*jwt.OperatorClaims{operator}
				o.AccountResolver = resolver
				o.SystemAccount = sysAccount
			},
			good:    func(c *NATSConfig) { c.CredsFile = creds },
			bad:     func(c *NATSConfig) { c.CredsFile = strangerCreds },
			badWant: "authorization violation",
		},
		{
			name: "mutual TLS",
			server: func(o *server.Options) {
				o.TLS, o.TLSVerify, o.TLSTimeout = true, true, 5
				o.TLSConfig = pki.ServerTLS(t)
			},
			good: func(c *NATSConfig) {
				c.TLS = TLSConfig{Enabled: true, CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey, ServerName: "localhost"}
			},
			bad: func(c *NATSConfig) {
				c.TLS = TLSConfig{Enabled: true, CAFile: pki.OtherCA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey, ServerName: "localhost"}
			},
			badWant: "certificate signed by unknown authority",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := testenv.StartNATS(t, tt.server)
			cfg := DefaultConfig().NATS
			cfg.Enabled = true
			cfg.URL = n.URL()
			cfg.AckTimeout = 10 * time.Second

			bad := cfg
			tt.bad(&bad)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := NewNATSSink(bad, "edge1", nil).Connect(ctx)
			if err == nil || !errors.Is(err, ErrUnavailable) || !strings.Contains(strings.ToLower(err.Error()), tt.badWant) {
				t.Errorf("connect with bad credentials: %v; want ErrUnavailable naming %q", err, tt.badWant)
			}

			good := cfg
			tt.good(&good)
			msgs := tailSample(t)
			writeAll(t, NewNATSSink(good, "edge1", nil), msgs)

			// Read back with a client of its own on the same server.
			st := openStream(t, ctx, good)
			for i, m := range msgs {
				got, err := st.GetMsg(ctx, uint64(i+1))
				if err != nil {
					t.Fatalf("stream seq %d: %v", i+1, err)
				}
				if id := got.Header.Get(nats.MsgIdHdr); id != m.ID || string(got.Data) != string(m.Value) {
					t.Errorf("stream seq %d: id %q (%d bytes), want %q (%d bytes)", i+1, id, len(got.Data), m.ID, len(m.Value))
				}
			}
		})
	}
}

func newNKey(t *testing.T, create func() (nkeys.KeyPair, error)) (seed []byte, pub string) {
	t.Helper()
	kp, err := create()
	must(t, err)
	seed, err = kp.Seed()
	must(t, err)
	pub, err = kp.PublicKey()
	must(t, err)
	return seed, pub
}

// jwtAuth builds decentralised auth: an operator, a system account, an
// account with JetStream enabled and a user of it (creds), and a user of an
// account the server does not know (strangerCreds).
func jwtAuth(t *testing.T, dir string) (op *jwt.OperatorClaims, res *server.MemAccResolver, sysPub, creds, strangerCreds string) {
	t.Helper()
	okp, err := nkeys.CreateOperator()
	must(t, err)
	opub, err := okp.PublicKey()
	must(t, err)
	op = jwt.NewOperatorClaims(opub)
	_, err = op.Encode(okp)
	must(t, err)
	res = &server.MemAccResolver{}
	account := func(js bool) (nkeys.KeyPair, string) {
		akp, err := nkeys.CreateAccount()
		must(t, err)
		apub, err := akp.PublicKey()
		must(t, err)
		ac := jwt.NewAccountClaims(apub)
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		ajwt, err := ac.Encode(okp)
		must(t, err)
		must(t, res.Store(apub, ajwt))
		return akp, apub
	}
	_, sysPub = account(false)
	akp, _ := account(true)
	userCreds := func(akp nkeys.KeyPair, name string) string {
		ukp, err := nkeys.CreateUser()
		must(t, err)
		upub, err := ukp.PublicKey()
		must(t, err)
		ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
		must(t, err)
		seed, err := ukp.Seed()
		must(t, err)
		b, err := jwt.FormatUserConfig(ujwt, seed)
		must(t, err)
		path := filepath.Join(dir, name)
		must(t, os.WriteFile(path, b, 0o600))
		return path
	}
	creds = userCreds(akp, "edge.creds")
	stranger, err := nkeys.CreateAccount() // signed by no operator the server trusts
	must(t, err)
	strangerCreds = userCreds(stranger, "stranger.creds")
	if creds == "" || strangerCreds == "" {
		t.Fatal(fmt.Errorf("no creds written"))
	}
	return op, res, sysPub, creds, strangerCreds
}

// openStream connects a client of its own with cfg's credentials and
// returns cfg's stream, to read back what a sink published.
func openStream(t *testing.T, ctx context.Context, cfg NATSConfig) jetstream.Stream {
	t.Helper()
	opts, err := NATSOptions(cfg, "reader")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
