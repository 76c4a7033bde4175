package agent

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kardianos/service"
	"github.com/spf13/cobra"
)

// UnitPath is where the packaged binary lives; the unit refers to it.
const UnitPath = "/usr/bin/bgpedge"

// SystemdUnit is the hardened unit shipped in the packages and written by
// `bgpedge service install` on systemd (kardianos' generated unit runs
// unconfined). packaging/bgpedge.service is SystemdUnit(UnitPath, DefaultConfigFile);
// a test keeps them equal.
func SystemdUnit(binary, configFile string) string {
	r := strings.NewReplacer("@BIN@", binary, "@CONFIG@", configFile)
	return r.Replace(systemdUnitTemplate)
}

const systemdUnitTemplate = `# bgpedge: BMP station and exaBGP event spool, forwarding to Kafka / NATS JetStream.
# Hardened: systemd-analyze security bgpedge.service scores it below 2.0.
[Unit]
Description=bgpedge BMP station and event spool
Documentation=https://github.com/bgpedge/bgpedge
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
User=bgpedge
Group=bgpedge
ExecStart=@BIN@ run --config @CONFIG@
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# 78 (EX_CONFIG): the configuration is bad; a restart cannot fix it.
RestartPreventExitStatus=78
TimeoutStartSec=120s
TimeoutStopSec=90s
KillMode=mixed
LimitNOFILE=65536

# The spool lives under /var/lib/bgpedge; everything else is read-only.
StateDirectory=bgpedge
StateDirectoryMode=0750
UMask=0077
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
ProcSubset=pid
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
DevicePolicy=closed
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`

func serviceConfig(configFile string) *service.Config {
	if configFile == "" {
		configFile = DefaultConfigFile
	}
	return &service.Config{
		Name:        "bgpedge",
		DisplayName: "bgpedge",
		Description: "bgpedge BMP station and event spool",
		Arguments:   []string{"run", "--config", configFile},
		Option: service.KeyValue{
			"SystemdScript": SystemdUnit(UnitPath, configFile),
			"Restart":       "on-failure",
			"ReloadSignal":  "HUP",
		},
	}
}

// noopProgram lets the service command build a service.Service for control
// actions, which never start the program.
type noopProgram struct{}

func (noopProgram) Start(service.Service) error { return nil }
func (noopProgram) Stop(service.Service) error  { return nil }

func newServiceCommand() *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:       "service install|uninstall|start|stop|restart|status|unit",
		Short:     "Manage bgpedge as an OS service (the deb/rpm packages install it already)",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"install", "uninstall", "start", "stop", "restart", "status", "unit"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "unit" {
				// The packaged systemd unit, for installs from a tarball.
				cf := configFile
				if cf == "" {
					cf = DefaultConfigFile
				}
				_, err := fmt.Fprint(cmd.OutOrStdout(), SystemdUnit(UnitPath, cf))
				return err
			}
			s, err := service.New(noopProgram{}, serviceConfig(configFile))
			if err != nil {
				return fmt.Errorf("service: %w", err)
			}
			action := args[0]
			if action == "status" {
				st, err := s.Status()
				if errors.Is(err, service.ErrNotInstalled) {
					_, err = fmt.Fprintf(cmd.OutOrStdout(), "bgpedge service: not installed (%s)\n", service.Platform())
					return err
				}
				if err != nil {
					return fmt.Errorf("service status (%s): %w", service.Platform(), err)
				}
				name := map[service.Status]string{
					service.StatusRunning: "running", service.StatusStopped: "stopped",
				}[st]
				if name == "" {
					name = "unknown"
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "bgpedge service: %s (%s)\n", name, service.Platform())
				return err
			}
			if err := service.Control(s, action); err != nil {
				return fmt.Errorf("service %s: %w", action, err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "bgpedge service: %s done (%s)\n", action, service.Platform())
			return err
		},
	}
	cmd.Flags().StringVarP(&configFile, "config", "c", "", "configuration file the service runs with (default "+DefaultConfigFile+")")
	return cmd
}
