// Package agent wires bgpedge together: the command line, configuration,
// lifecycle, fleet configuration, the OS service and the HTTP endpoints.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Build information, set by the linker (-X) at release time.
var (
	Version   = "dev"
	Commit    = "none"
	BuildDate = "unknown"
)

// errSilent is returned by commands that already printed their error.
var errSilent = errors.New("silent")

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdin, stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		if !errors.Is(err, errSilent) {
			fmt.Fprintf(stderr, "bgpedge: %v\n", err)
		}
		return 1
	}
	return 0
}

// NewRootCommand builds the bgpedge command tree.
func NewRootCommand(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "bgpedge",
		Short:         "BMP station and exaBGP process that never loses an event on the way to Kafka",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newVersionCommand(),
		newBridgeCommand(),
		newTailCommand(),
		newConfigCommand(),
		newRunCommand(),
		newServiceCommand(),
		newFleetCommand(),
		newExabgpCommand(),
		newRoutesCommand(),
		newReplayCommand(),
		newBufferCommand(),
	)
	return root
}
