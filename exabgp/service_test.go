package exabgp

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
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
			sub, err := nc.Subscribe("bgpedge.edge1.exabgp.command", func(m *nats.Msg) {
				b, _ := json.Marshal(Reply{ID: "x", Result: ResultOK})
				_ = m.Respond(b)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			msg, err := nc.Request("bgpedge.edge1.exabgp.command", []byte(`{"verb":"list"}`), 5*time.Second)
			if err != nil || !json.Valid(msg.Data) {
				t.Fatalf("request with good credentials: %v", err)
			}

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
