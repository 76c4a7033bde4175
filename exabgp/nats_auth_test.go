package exabgp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestConnectNATSCreds: a creds file (user JWT + seed) of an account the
// server trusts through its operator connects and answers a request; the
// creds of a revoked user, of a user of an account the operator never
// signed, and a corrupt creds file do not connect, and say why, both the way
// the CLI connects (fail at once) and the way the agent does (keeps retrying:
// the error is the connection's last error).
func TestConnectNATSCreds(t *testing.T) {
	dir := t.TempDir()
	okp := natsAuthKey(t, nkeys.CreateOperator)
	op := jwt.NewOperatorClaims(natsAuthPub(t, okp))
	if _, err := op.Encode(okp); err != nil {
		t.Fatal(err)
	}
	res := &natsserver.MemAccResolver{}
	account := func(revoke ...string) (nkeys.KeyPair, string) {
		akp := natsAuthKey(t, nkeys.CreateAccount)
		apub := natsAuthPub(t, akp)
		ac := jwt.NewAccountClaims(apub)
		for _, u := range revoke {
			// Revokes every JWT of u issued up to now.
			ac.RevokeAt(u, time.Now().Add(time.Minute))
		}
		ajwt, err := ac.Encode(okp)
		if err != nil {
			t.Fatal(err)
		}
		if err := res.Store(apub, ajwt); err != nil {
			t.Fatal(err)
		}
		return akp, apub
	}
	_, sysPub := account()
	acct, _ := account()
	good := natsAuthCreds(t, dir, "edge1.creds", acct, natsAuthKey(t, nkeys.CreateUser))

	revokedUser := natsAuthKey(t, nkeys.CreateUser)
	revokingAcct, _ := account(natsAuthPub(t, revokedUser))
	revoked := natsAuthCreds(t, dir, "revoked.creds", revokingAcct, revokedUser)

	// Signed by an account key the operator never signed: the server cannot
	// resolve the issuer.
	stranger := natsAuthCreds(t, dir, "stranger.creds", natsAuthKey(t, nkeys.CreateAccount), natsAuthKey(t, nkeys.CreateUser))

	corrupt := filepath.Join(dir, "corrupt.creds")
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	// A truncated file, as a botched copy leaves it: the JWT block is cut.
	if err := os.WriteFile(corrupt, b[:len(b)/3], 0o600); err != nil {
		t.Fatal(err)
	}

	ns := testenv.StartNATS(t, func(o *natsserver.Options) {
		o.JetStream = false
		o.TrustedOperators = []*jwt.OperatorClaims{op}
		o.AccountResolver = res
		o.SystemAccount = sysPub
	})
	log := slog.New(slog.DiscardHandler)

	t.Run("good", func(t *testing.T) {
		nc, err := ConnectNATS(NATSConfig{URL: ns.URL(), CredsFile: good}, "test", log)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		commandRoundTrip(t, nc, "creds")
	})

	for _, tt := range []struct {
		name  string
		creds string
		want  []string // all in the error, lower case
	}{
		{"revoked user", revoked, []string{"authorization violation"}},
		{"unknown account", stranger, []string{"authorization violation"}},
		{"corrupt file", corrupt, []string{"corrupt.creds", "no nkey seed found"}},
		{"missing file", filepath.Join(dir, "nope.creds"), []string{"nope.creds", "no such file"}},
	} {
		names := func(err error) bool {
			msg := strings.ToLower(err.Error())
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					return false
				}
			}
			return true
		}
		t.Run(tt.name+"/cli", func(t *testing.T) {
			nc, err := ConnectNATS(NATSConfig{URL: ns.URL(), CredsFile: tt.creds}, "test", log, nats.RetryOnFailedConnect(false))
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			t.Logf("refused: %v", err)
			if !strings.HasPrefix(err.Error(), "nats connect: ") || !names(err) {
				t.Errorf("error %q; want it to name %q", err, tt.want)
			}
		})
		t.Run(tt.name+"/agent", func(t *testing.T) {
			nc, err := ConnectNATS(NATSConfig{URL: ns.URL(), CredsFile: tt.creds}, "test", log)
			if err != nil {
				t.Logf("refused at once: %v", err)
				if !names(err) {
					t.Errorf("error %q; want it to name %q", err, tt.want)
				}
				return
			}
			defer nc.Close()
			// Read once: a reconnect attempt clears the last error.
			var last error
			testenv.Eventually(t, 10*time.Second, "the refusal is the connection's last error", func() bool {
				last = nc.LastError()
				return last != nil
			})
			if nc.IsConnected() {
				t.Fatal("connected")
			}
			t.Logf("retrying, last error: %v", last)
			if !names(last) {
				t.Errorf("last error %q; want it to name %q", last, tt.want)
			}
		})
	}
}

// natsCommandPermissions is the authorization docs/exabgp.md recommends, in
// nats-server's configuration syntax: each agent may subscribe to its own
// command subject and answer what it receives (allow_responses), nothing
// else; central may send commands to every agent and read the replies.
const natsCommandPermissions = `
authorization {
  users = [
    {user: edge1, password: pw-edge1, permissions: {
      subscribe: "bgpedge.edge1.exabgp.command"
      allow_responses: true
    }}
    {user: edge2, password: pw-edge2, permissions: {
      subscribe: "bgpedge.edge2.exabgp.command"
      allow_responses: true
    }}
    {user: central, password: pw-central, permissions: {
      publish: "bgpedge.*.exabgp.command"
      subscribe: "_INBOX.>"
    }}
  ]
}
`

// TestCommandSubjectPermissions runs the command path of two agents as
// `bgpedge exabgp` runs it (Process with commands enabled, connecting with
// its own configured credentials, a fake exaBGP on its stdin/stdout) behind
// a nats-server configured with the documented permissions, and shows that
// they are sufficient for central and keep agents apart: central's requests
// are answered (allow_responses covers the reply); edge1 can neither listen
// to nor command edge2; edge2 cannot command edge1.
func TestCommandSubjectPermissions(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte(natsCommandPermissions), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := natsserver.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	ns := testenv.StartNATS(t, func(so *natsserver.Options) { so.Users, so.JetStream = o.Users, false })
	url := ns.URL()

	edge1 := startPermAgent(t, url, "edge1", "pw-edge1")
	edge2 := startPermAgent(t, url, "edge2", "pw-edge2")

	central, centralErrs := permConn(t, url, "central", "pw-central")
	request := func(agent string, req Request) (Reply, error) {
		b, _ := json.Marshal(req)
		msg, err := central.Request("bgpedge."+agent+".exabgp.command", b, 5*time.Second)
		if err != nil {
			return Reply{}, err
		}
		var rep Reply
		if err := json.Unmarshal(msg.Data, &rep); err != nil {
			return Reply{}, fmt.Errorf("reply %q: %w", msg.Data, err)
		}
		return rep, nil
	}
	for _, a := range []string{"edge1", "edge2"} {
		// The agents subscribe in the background after connecting; until
		// then a request finds no responder.
		testenv.Eventually(t, 15*time.Second, a+" answers central's list", func() bool {
			_, err := request(a, Request{ID: "ready", Verb: VerbList})
			return err == nil
		})
	}

	t.Run("central commands edge1", func(t *testing.T) {
		rep, err := request("edge1", Request{ID: "a1", Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.1"},
			Route: &Route{Prefix: "100.100.1.0/24", NextHop: "self"}})
		if err != nil || rep.ID != "a1" || rep.Result != ResultDone {
			t.Fatalf("announce: %+v, %v", rep, err)
		}
		rep, err = request("edge1", Request{ID: "l1", Verb: VerbList})
		if err != nil || rep.ID != "l1" || rep.Result != ResultOK || len(rep.Routes) != 1 || rep.Routes[0].RequestID != "a1" {
			t.Fatalf("edge1's list: %+v, %v", rep, err)
		}
		if got := edge1.exa.seen(); len(got) != 1 || !strings.Contains(got[0], "100.100.1.0/24") {
			t.Fatalf("edge1's exaBGP got %q", got)
		}
	})

	t.Run("edge1 cannot listen to edge2", func(t *testing.T) {
		nc, errs := permConn(t, url, "edge1", "pw-edge1")
		sub, err := nc.Subscribe("bgpedge.edge2.exabgp.command", func(*nats.Msg) {})
		if err == nil {
			defer sub.Unsubscribe()
		}
		if err == nil {
			err = waitPermErr(t, errs, "subscription", "bgpedge.edge2.exabgp.command")
		}
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("subscribe to edge2's commands: %v; want a permissions violation", err)
		}
		// No wildcard either: not even below its own subject.
		own, err := nc.Subscribe("bgpedge.edge1.exabgp.command.x", func(*nats.Msg) {})
		if err == nil {
			defer own.Unsubscribe()
			err = waitPermErr(t, errs, "subscription", "bgpedge.edge1.exabgp.command.x")
		}
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("subscribe below edge1's subject: %v; want a permissions violation", err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errs:
			t.Fatalf("unexpected async error: %v", err)
		default:
		}
	})

	// fromAgent sends an announce as agent `as` to the subject of agent
	// `to`: refused, never reaching `to`'s exaBGP.
	fromAgent := func(t *testing.T, as, pw, to string, dst *permAgent, asRequest bool) {
		t.Helper()
		nc, errs := permConn(t, url, as, pw)
		b, _ := json.Marshal(Request{ID: "evil-" + as, Verb: VerbAnnounceRoute, Neighbors: []string{"192.0.2.1"},
			Route: &Route{Prefix: "100.100.66.0/24", NextHop: "self"}})
		subject := "bgpedge." + to + ".exabgp.command"
		if asRequest {
			msg, err := nc.Request(subject, b, 2*time.Second)
			if err == nil {
				t.Fatalf("%s's request to %s answered: %q", as, to, msg.Data)
			}
		} else if err := nc.Publish(subject, b); err != nil {
			t.Fatal(err)
		}
		if err := waitPermErr(t, errs, "publish", subject); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("%s publishing to %s: %v; want a permissions violation", as, subject, err)
		}
		// The server refused the publish before it reported the violation,
		// and the agent answers in order: had the command been delivered, it
		// would be in the journal by the time this list is answered.
		rep, err := request(to, Request{ID: "after-" + as, Verb: VerbList})
		if err != nil || rep.Result != ResultOK {
			t.Fatalf("%s's list: %+v, %v", to, rep, err)
		}
		for _, r := range rep.Routes {
			if r.RequestID == "evil-"+as {
				t.Fatalf("%s's command reached %s: %+v", as, to, r)
			}
		}
		for _, l := range dst.exa.seen() {
			if strings.Contains(l, "100.100.66.0/24") {
				t.Fatalf("%s's command reached %s's exaBGP: %q", as, to, l)
			}
		}
	}
	t.Run("edge1 cannot command edge2", func(t *testing.T) { fromAgent(t, "edge1", "pw-edge1", "edge2", edge2, false) })
	t.Run("edge2 cannot command edge1", func(t *testing.T) { fromAgent(t, "edge2", "pw-edge2", "edge1", edge1, true) })

	select {
	case err := <-centralErrs:
		t.Errorf("central's connection: %v", err)
	default:
	}
	for _, a := range []*permAgent{edge1, edge2} {
		if l := a.logs.String(); strings.Contains(l, "cannot answer") || strings.Contains(l, "route commands") {
			t.Errorf("%s logged: %s", a.id, l)
		}
	}
}

// permAgent is one agent's command path: the real Process with commands
// enabled, connecting to NATS with its own credentials, and a fake exaBGP
// that acks every command with done.
type permAgent struct {
	id   string
	exa  *permExaBGP
	logs *testenv.LogBuffer
}

type permExaBGP struct {
	mu    sync.Mutex
	lines []string
}

func (f *permExaBGP) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func startPermAgent(t *testing.T, url, id, password string) *permAgent {
	t.Helper()
	cfg := testConfig(t)
	cfg.Commands.Enabled = true
	cfg.Commands.AckTimeout = 5 * time.Second
	cfg.Commands.NATS = NATSConfig{URL: url, User: id, Password: password}
	cfg.Policy = PolicyConfig{AllowedVerbs: []string{VerbAnnounceRoute, VerbWithdrawRoute}, AllowedPrefixes: []string{"100.100.0.0/16"},
		MaxPrefixLengthV4: 24, AllowedNeighbors: []string{"192.0.2.1"}, AllowedNextHops: []string{"self"},
		MaxRoutes: 10, RatePerSecond: 100, RateBurst: 100}
	inR, inW := io.Pipe()   // exaBGP -> bgpedge stdin
	outR, outW := io.Pipe() // bgpedge stdout -> exaBGP
	a := &permAgent{id: id, exa: &permExaBGP{}, logs: &testenv.LogBuffer{}}
	p, err := New(Options{Config: cfg, AgentID: id, OpenSpool: func() (Spool, error) { return &memSpool{}, nil },
		In: inR, Out: outW, Logger: slog.New(slog.NewTextHandler(a.logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			a.exa.mu.Lock()
			a.exa.lines = append(a.exa.lines, sc.Text())
			a.exa.mu.Unlock()
			if _, err := io.WriteString(inW, "done\n"); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: run: %v", id, err)
		}
		inW.Close()
		outR.Close()
	})
	return a
}

// permConn connects as user the way the agent and the CLI do, and reports
// the server's asynchronous errors (permission violations) on the channel.
func permConn(t *testing.T, url, user, password string) (*nats.Conn, chan error) {
	t.Helper()
	errs := make(chan error, 16)
	nc, err := ConnectNATS(NATSConfig{URL: url, User: user, Password: password}, "test-"+user, slog.New(slog.DiscardHandler),
		nats.RetryOnFailedConnect(false),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// waitPermErr returns the asynchronous error that names op (publish or
// subscription) of subject, or nil if none comes in time. Others are
// skipped: a request of an agent also trips over its missing inbox
// subscription.
func waitPermErr(t *testing.T, errs chan error, op, subject string) error {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-errs:
			msg := strings.ToLower(err.Error())
			if strings.Contains(msg, op) && strings.Contains(msg, `"`+subject+`"`) {
				return err
			}
			t.Logf("other async error: %v", err)
		case <-timeout:
			return nil
		}
	}
}

func natsAuthKey(t *testing.T, create func() (nkeys.KeyPair, error)) nkeys.KeyPair {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func natsAuthPub(t *testing.T, kp nkeys.KeyPair) string {
	t.Helper()
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// natsAuthCreds writes a creds file for user, issued by account.
func natsAuthCreds(t *testing.T, dir, name string, account, user nkeys.KeyPair) string {
	t.Helper()
	ujwt, err := jwt.NewUserClaims(natsAuthPub(t, user)).Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := user.Seed()
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// commandRoundTrip answers on edge1's command subject over nc and sends a
// request there: the connection may both listen and publish on it.
func commandRoundTrip(t *testing.T, nc *nats.Conn, id string) {
	t.Helper()
	sub, err := nc.Subscribe("bgpedge.edge1.exabgp.command", func(m *nats.Msg) {
		b, _ := json.Marshal(Reply{ID: id, Result: ResultOK})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	msg, err := nc.Request("bgpedge.edge1.exabgp.command", []byte(`{"verb":"list"}`), 10*time.Second)
	if err != nil {
		t.Fatalf("command request: %v", err)
	}
	var rep Reply
	if err := json.Unmarshal(msg.Data, &rep); err != nil || rep.ID != id || rep.Result != ResultOK {
		t.Fatalf("reply %q (%v)", msg.Data, err)
	}
}
