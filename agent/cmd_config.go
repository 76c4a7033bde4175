package agent

import (
	"fmt"
	"os"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// configFlags are the flags every command that reads the bootstrap config takes.
type configFlags struct {
	file     string
	logLevel string
}

func (f *configFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.file, "config", "c", "", "configuration file (default "+DefaultConfigFile+" when it exists)")
	fs.StringVar(&f.logLevel, "log-level", "", "override log.level (debug, info, warn, error)")
}

func (f *configFlags) options() LoadOptions {
	o := LoadOptions{File: f.file, FileRequired: f.file != ""}
	if f.logLevel != "" {
		o.Overrides = map[string]any{"log.level": f.logLevel}
	}
	return o
}

// load reads and validates the configuration.
func (f *configFlags) load() (Config, error) {
	cfg, err := Load(f.options())
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Check or print the agent configuration",
	}
	cmd.AddCommand(newConfigValidateCommand(), newConfigShowCommand())
	return cmd
}

func newConfigValidateCommand() *cobra.Command {
	var flags configFlags
	var probe bool
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check the configuration (file, environment, flags); exit non-zero naming every bad key",
		Long: "Check the configuration (file, environment, flags); exit 78 naming every bad key.\n" +
			"With --probe, also ask the forwarder's Kafka and NATS settings which sink they reach,\n" +
			"as a reload does, and exit 1 if neither answers.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, w := range EnvWarnings(os.Environ()) {
				fmt.Fprintf(cmd.ErrOrStderr(), "bgpedge: warning: %s\n", w)
			}
			cfg, err := flags.load()
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "bgpedge: %v\n", err)
				return printed(err)
			}
			src := flags.file
			if src == "" {
				src = DefaultConfigFile + " (if present), defaults and environment"
			}
			if _, err := fmt.Fprintf(cmd.OutOrStdout(), "configuration OK: %s\n", src); err != nil {
				return err
			}
			if !probe {
				return nil
			}
			if !cfg.Forwarder.Enabled {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), "forwarder disabled: nothing to probe")
				return err
			}
			got, err := forwarder.Reach(cmd.Context(), cfg.ForwarderSettings(), nil)
			if got == forwarder.SinkNone {
				fmt.Fprintf(cmd.ErrOrStderr(), "bgpedge: forwarder reaches no sink: %v\n", err)
				return printed(fmt.Errorf("probe: %w", err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "forwarder reaches %s\n", got)
			if err != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "  before it: %v\n", err)
			}
			return nil
		},
	}
	flags.register(cmd.Flags())
	cmd.Flags().BoolVar(&probe, "probe", false, "also probe the forwarder's sinks (network or disk access)")
	return cmd
}

func newConfigShowCommand() *cobra.Command {
	var flags configFlags
	var env bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration as YAML, secrets masked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if env {
				for _, n := range EnvNames() {
					fmt.Fprintln(cmd.OutOrStdout(), n)
				}
				return nil
			}
			cfg, err := Load(flags.options())
			if err != nil {
				return err
			}
			out, err := RenderYAML(cfg)
			if err != nil {
				return err
			}
			if _, err := cmd.OutOrStdout().Write(out); err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "bgpedge: warning: %v\n", err)
				return printed(err)
			}
			return nil
		},
	}
	flags.register(cmd.Flags())
	cmd.Flags().BoolVar(&env, "env", false, "list the environment variables that set each key instead")
	return cmd
}
