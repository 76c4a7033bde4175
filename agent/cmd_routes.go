package agent

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/exabgp"
)

// routesFlags are shared by the `routes` subcommands (central's side).
type routesFlags struct {
	agent, subject string
	nats           exabgp.NATSConfig
	timeout        time.Duration
	id             string
	neighbors      []string
}

// newRoutesCommand is `bgpedge routes announce|withdraw|list|refresh|request`:
// sends route commands to an edge's exaBGP process over NATS and prints the reply.
func newRoutesCommand() *cobra.Command {
	f := &routesFlags{}
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "Send route commands to an edge's exaBGP process over NATS (announce, withdraw, list)",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.agent, "agent", "", "agent id of the edge (subject bgpedge.<agent>.exabgp.command)")
	pf.StringVar(&f.subject, "subject", "", "request subject (overrides --agent)")
	natsFlags(pf, &f.nats, "nats://127.0.0.1:4222")
	pf.DurationVar(&f.timeout, "timeout", 15*time.Second, "how long to wait for the reply")
	pf.StringVar(&f.id, "id", "", "request id (default: random)")
	pf.StringSliceVar(&f.neighbors, "neighbor", nil, "scope to these exaBGP neighbors (repeatable)")

	cmd.AddCommand(
		routeVerbCommand(f, "announce", exabgp.VerbAnnounceRoute),
		routeVerbCommand(f, "withdraw", exabgp.VerbWithdrawRoute),
		&cobra.Command{
			Use: "list", Short: "List the routes and flows injected on the edge", Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return f.send(cmd, &exabgp.Request{Verb: exabgp.VerbList})
			},
		},
		routeRefreshCommand(f),
		rawRequestCommand(f),
	)
	return cmd
}

func routeVerbCommand(f *routesFlags, use, verb string) *cobra.Command {
	var (
		r                 exabgp.Route
		asPath            string
		med, lp           int64
		comms, large, ext []string
	)
	c := &cobra.Command{
		Use:   use + " PREFIX",
		Short: use + " a route on the edge's exaBGP sessions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r.Prefix = args[0]
			if asPath != "" {
				for _, s := range strings.Split(asPath, ",") {
					n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
					if err != nil {
						return fmt.Errorf("--as-path: %q is not an AS number", s)
					}
					r.ASPath = append(r.ASPath, uint32(n))
				}
			}
			if med >= 0 {
				v := uint32(med)
				r.MED = &v
			}
			if lp >= 0 {
				v := uint32(lp)
				r.LocalPref = &v
			}
			r.Communities, r.LargeCommunities, r.ExtCommunities = comms, large, ext
			return f.send(cmd, &exabgp.Request{Verb: verb, Route: &r})
		},
	}
	fl := c.Flags()
	fl.StringVar(&r.NextHop, "next-hop", "", "next hop address, or self")
	if verb == exabgp.VerbAnnounceRoute {
		fl.StringVar(&r.Origin, "origin", "", "igp, egp or incomplete")
		fl.StringVar(&asPath, "as-path", "", "comma-separated AS numbers")
		fl.Int64Var(&med, "med", -1, "MED")
		fl.Int64Var(&lp, "local-pref", -1, "LOCAL_PREF")
		fl.StringSliceVar(&comms, "community", nil, "communities, e.g. 65001:100 (repeatable)")
		fl.StringSliceVar(&large, "large-community", nil, "large communities, e.g. 65001:1:2")
		fl.StringSliceVar(&ext, "ext-community", nil, "extended communities, e.g. target:65001:100")
	} else {
		med, lp = -1, -1
	}
	return c
}

func routeRefreshCommand(f *routesFlags) *cobra.Command {
	var family string
	c := &cobra.Command{
		Use: "refresh", Short: "Ask the edge's neighbors to resend their routes (route refresh)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.send(cmd, &exabgp.Request{Verb: exabgp.VerbRouteRefresh, Family: family})
		},
	}
	c.Flags().StringVar(&family, "family", "ipv4 unicast", "\"<afi> <safi>\"")
	return c
}

func rawRequestCommand(f *routesFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "request JSON",
		Short: "Send a request given as JSON (e.g. announce-flow with a flow rule)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req exabgp.Request
			if err := json.Unmarshal([]byte(args[0]), &req); err != nil {
				return fmt.Errorf("request JSON: %w", err)
			}
			return f.send(cmd, &req)
		},
	}
}

var errCommandFailed = errors.New("command failed")

func (f *routesFlags) send(cmd *cobra.Command, req *exabgp.Request) error {
	subject := f.subject
	if subject == "" {
		if f.agent == "" {
			return errors.New("--agent or --subject is required")
		}
		subject = "bgpedge." + f.agent + ".exabgp.command"
	}
	if req.ID == "" {
		req.ID = f.id
	}
	if req.ID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		req.ID = hex.EncodeToString(b[:])
	}
	if len(req.Neighbors) == 0 {
		req.Neighbors = f.neighbors
	}
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	f.nats.URL = strings.TrimSpace(f.nats.URL)
	// No background retry: a wrong URL or credentials fail at once.
	nc, err := exabgp.ConnectNATS(natsFlagsTLS(f.nats), "bgpedge-routes", slog.New(slog.DiscardHandler), nats.RetryOnFailedConnect(false))
	if err != nil {
		return err
	}
	defer nc.Close()
	msg, err := nc.Request(subject, body, f.timeout)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	var rep exabgp.Reply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return fmt.Errorf("decode reply: %w", err)
	}
	out, _ := json.MarshalIndent(rep, "", "  ")
	fmt.Fprintln(cmd.OutOrStdout(), string(out))
	if rep.Result != exabgp.ResultDone && rep.Result != exabgp.ResultOK {
		return fmt.Errorf("%w: %s: %s", errCommandFailed, rep.Result, rep.Reason)
	}
	return nil
}
