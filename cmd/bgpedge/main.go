// Command bgpedge is the edge agent: a BMP station and exaBGP process that
// spools every event durably and forwards it to Kafka or NATS JetStream.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/bgpedge/bgpedge/agent"
	"github.com/bgpedge/bgpedge/internal/gctune"
)

func main() {
	gctune.Apply(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(agent.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
