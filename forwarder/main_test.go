package forwarder

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The kill -9 test re-executes this binary as the forwarding process.
	if os.Getenv(childEnv) != "" {
		os.Exit(runKillChild())
	}
	os.Exit(m.Run())
}
