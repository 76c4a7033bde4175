package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/rib"
)

func newRIBCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rib",
		Short: "Look at the route state (bmp.rib): the running agent's, or the state directory's when it is stopped",
	}
	cmd.AddCommand(newRIBShowCommand())
	return cmd
}

// ribShowTimeout bounds the question to a running agent.
const ribShowTimeout = 30 * time.Second

func newRIBShowCommand() *cobra.Command {
	var cf configFlags
	var q rib.Query
	var httpAddr, stateDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Route counts per router, peer and table, and the routes matching --prefix (longest match and more-specifics)",
		Long: `Asks the running agent (GET /rib on http.listen); when none answers, reads
agent.state_dir/rib.db directly (read-only: that works only while no agent
holds it). The counts and routes are the committed state: what the sinks
acknowledged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if httpAddr == "" || stateDir == "" {
				cfg, err := cf.load()
				if err != nil {
					return err
				}
				if httpAddr == "" {
					httpAddr = cfg.HTTP.Listen
				}
				if stateDir == "" {
					stateDir = cfg.Agent.StateDir
				}
			}
			rep, err := askAgent(cmd.Context(), httpAddr, q)
			if errors.Is(err, errNoAgent) {
				rep, err = rib.ShowDir(stateDir, q)
			}
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return printRIB(cmd.OutOrStdout(), rep)
		},
	}
	cf.register(cmd.Flags())
	fs := cmd.Flags()
	fs.StringVar(&q.Router, "router", "", "only this router (its address)")
	fs.StringVar(&q.Peer, "peer", "", "only this peer (its address; 0.0.0.0 for Loc-RIB)")
	fs.StringVar(&q.Table, "table", "", "only this table: "+strings.Join(rib.Tables(), ", "))
	fs.StringVar(&q.Prefix, "prefix", "", "list the routes matching this prefix or address")
	fs.StringVar(&httpAddr, "http", "", "the agent's HTTP listener (default: http.listen of the configuration)")
	fs.StringVar(&stateDir, "state-dir", "", "the state directory when no agent runs (default: agent.state_dir)")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// errNoAgent: nothing answers on the HTTP address.
var errNoAgent = errors.New("no agent answers")

func askAgent(ctx context.Context, addr string, q rib.Query) (rib.Report, error) {
	if addr == "" {
		return rib.Report{}, errNoAgent
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, ribShowTimeout)
	defer cancel()
	v := url.Values{}
	for k, x := range map[string]string{"router": q.Router, "peer": q.Peer, "table": q.Table, "prefix": q.Prefix} {
		if x != "" {
			v.Set(k, x)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/rib?"+v.Encode(), nil)
	if err != nil {
		return rib.Report{}, fmt.Errorf("rib show: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rib.Report{}, fmt.Errorf("%w on %s: %w", errNoAgent, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return rib.Report{}, fmt.Errorf("rib show: the agent on %s answered %s: %s", addr, resp.Status, strings.TrimSpace(string(body)))
	}
	var rep rib.Report
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return rib.Report{}, fmt.Errorf("rib show: the agent's answer: %w", err)
	}
	return rep, nil
}

func printRIB(w io.Writer, rep rib.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "# source %s, applied through seq %d\n", rep.Source, rep.AppliedSeq)
	fmt.Fprintln(tw, "ROUTER\tPEER TYPE\tPEER RD\tPEER\tTABLE\tROUTES")
	for _, c := range rep.Counts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", c.Router, c.PeerType, c.PeerRD, c.Peer, c.Table, c.Routes)
	}
	if len(rep.Routes) > 0 {
		fmt.Fprintln(tw, "\nMATCH\tROUTER\tPEER\tTABLE\tFAMILY\tRD\tPREFIX\tPATH ID\tATTR HASH\tSTALE")
		for _, r := range rep.Routes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%v\n", r.Match, r.Router, r.Peer, r.Table, r.Family, r.RD, r.Prefix, r.PathID, r.AttrHash, r.Stale)
		}
	}
	return tw.Flush()
}

// ribRoutes are the agent's HTTP routes of the route state.
func (a *Agent) ribRoutes() map[string]http.Handler {
	return map[string]http.Handler{"GET /rib": a.ribHandler()}
}

// ribHandler serves GET /rib (`bgpedge rib show`) from the running route
// state.
func (a *Agent) ribHandler() http.Handler {
	return rib.Handler(func() *rib.Stage {
		a.mu.Lock()
		fp := a.fwd
		a.mu.Unlock()
		if fp == nil {
			return nil
		}
		if r, ok := fp.d.(interface{ RIB() *rib.Stage }); ok {
			return r.RIB()
		}
		return nil
	})
}
