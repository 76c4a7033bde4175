package agent

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit, build date and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "bgpedge %s (commit %s, built %s, %s %s/%s)\n",
				Version, Commit, BuildDate, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
