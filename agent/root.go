// Package agent wires bgpedge together: the command line, configuration
// (with its reload) and fleet configuration, the lifecycle of `bgpedge run`
// and the OS service. The parts every command that moves records is made of
// — spool, encoders, forwarder, HTTP endpoints, ordered shutdown — are
// package pipeline's: `run`, `exabgp` and `bridge` each configure them here.
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

// printed marks err as already printed; Main still reads its cause for the
// exit status.
func printed(err error) error { return fmt.Errorf("%w: %w", errSilent, err) }

// ExitConfig is the exit status when the configuration is invalid or
// missing (EX_CONFIG in sysexits.h). The unit's RestartPreventExitStatus
// names it: restarting cannot fix a bad file, and a unit left failed is
// what an operator's alerting sees.
const ExitConfig = 78

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdin, stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		if !errors.Is(err, errSilent) {
			fmt.Fprintf(stderr, "bgpedge: %v\n", err)
		}
		if errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrNoConfigFile) {
			return ExitConfig
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
		newRIBCommand(),
	)
	return root
}
