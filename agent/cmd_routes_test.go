package agent

import (
	"net"
	"strings"
	"testing"
	"time"
)

// Central's CLI must fail at once on an unreachable NATS, naming it, rather
// than retrying in the background until --timeout as the agent's own
// connection does.
func TestRoutesUnreachableNATSFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	start := time.Now()
	_, errOut, code := runCLI(t, "routes", "list", "--agent", "edge1", "--nats", "nats://"+addr, "--timeout", "30s")
	if code == 0 {
		t.Fatalf("exit code 0 against a closed port; stderr: %s", errOut)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("took %v, want a prompt failure, not the --timeout of 30s", el)
	}
	if !strings.Contains(errOut, "nats") {
		t.Errorf("error does not name nats: %q", errOut)
	}
}
