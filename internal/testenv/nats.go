package testenv

import (
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS is an embedded nats-server with JetStream, owned by one test, on an
// ephemeral loopback port. Stop and Start keep the port and the store
// directory, so an outage test can take it down and bring its data back.
type NATS struct {
	mu   sync.Mutex
	opts server.Options
	srv  *server.Server
}

// StartNATS starts an embedded JetStream server for the test and shuts it
// down when the test ends. Each configure function may change the server's
// options first (authentication, TLS).
func StartNATS(t testing.TB, configure ...func(*server.Options)) *NATS {
	t.Helper()
	n := &NATS{opts: server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}}
	for _, c := range configure {
		c(&n.opts)
	}
	n.Start(t)
	t.Cleanup(n.shutdown)
	return n
}

// Start (re)starts the server on its port and store directory and returns
// when it accepts clients.
func (n *NATS) Start(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return
	}
	opts := n.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		t.Fatalf("nats-server not ready within 30s")
	}
	if n.opts.Port == -1 {
		// Pin the port so a restart comes back where clients look for it.
		n.opts.Port = srv.Addr().(*net.TCPAddr).Port
	}
	n.srv = srv
}

// Stop shuts the server down (clients see the connection drop) and returns
// when it has stopped; the store directory is kept for Start.
func (n *NATS) Stop(t testing.TB) {
	t.Helper()
	n.shutdown()
}

func (n *NATS) shutdown() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}

// URL is the client URL, stable across Stop and Start.
func (n *NATS) URL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return "nats://" + net.JoinHostPort(n.opts.Host, strconv.Itoa(n.opts.Port))
}
