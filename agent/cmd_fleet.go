package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

// fleetFlags say how the fleet commands reach central.
type fleetFlags struct {
	conn  FleetConfig
	group string
	agent string
	file  string
	rev   uint64
}

func (f *fleetFlags) register(cmd *cobra.Command) {
	d := DefaultFleetConfig()
	natsFlags(cmd.Flags(), &f.conn.NATS, d.NATS.URL)
	cmd.Flags().StringVar(&f.conn.Bucket, "bucket", d.Bucket, "key-value bucket of the documents")
	cmd.Flags().StringVar(&f.conn.StatusBucket, "status-bucket", d.StatusBucket, "key-value bucket of agent status")
}

// cliJetStreamTimeout bounds each JetStream request of `bgpedge fleet`.
const cliJetStreamTimeout = 20 * time.Second

func (f *fleetFlags) open(ctx context.Context, name string) (jetstream.KeyValue, func(), error) {
	conn := f.conn
	conn.NATS = natsFlagsTLS(conn.NATS)
	nc, err := fleetConnect(conn, "bgpedge-fleet-cli")
	if err != nil {
		return nil, nil, err
	}
	// Creating a bucket is a JetStream stream creation, which a busy server
	// (every replica syncing to disk) can take longer than the client's
	// default 5 s to answer; the command line has no retry loop of its own.
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(cliJetStreamTimeout))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("fleet: jetstream: %w", err)
	}
	kv, err := bucket(ctx, js, name)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return kv, nc.Close, nil
}

func newFleetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Publish central configuration documents and read agents' status",
	}
	cmd.AddCommand(newFleetPushCommand(), newFleetStatusCommand())
	return cmd
}

func newFleetPushCommand() *cobra.Command {
	var f fleetFlags
	cmd := &cobra.Command{
		Use:   "push (--group G | --agent A) --file F",
		Short: "Validate a configuration document locally and publish it (compare-and-set)",
		Long: `Publishes F under group.<G> or agent.<A> in the fleet bucket. The document
is a partial bgpedge configuration (any sections but fleet) merged over each
agent's local file; an agent's own document wins over its group's. It is
decoded strictly and validated before anything is sent. The write is a
compare-and-set: on the revision given with --revision, or else on the
revision read just before, so concurrent pushes cannot overwrite each other.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (f.group == "") == (f.agent == "") {
				return errors.New("give exactly one of --group and --agent")
			}
			doc, err := os.ReadFile(f.file)
			if err != nil {
				return err
			}
			if err := checkFleetDoc(doc); err != nil {
				return err
			}
			cfg, err := LoadBytes(doc)
			if err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			key := "group." + f.group
			if f.agent != "" {
				key = "agent." + f.agent
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			kv, closeConn, err := f.open(ctx, f.conn.Bucket)
			if err != nil {
				return err
			}
			defer closeConn()
			rev, err := casPut(ctx, kv, key, doc, f.rev, cmd.Flags().Changed("revision"))
			if err != nil {
				return err
			}
			d := newFleetDoc(key, rev, doc)
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "pushed %s revision %d sha256 %s\n", key, rev, d.SHA256)
			return err
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&f.group, "group", "", "publish the document of this group")
	cmd.Flags().StringVar(&f.agent, "agent", "", "publish the document of this agent")
	cmd.Flags().StringVarP(&f.file, "file", "f", "", "YAML document to publish")
	cmd.Flags().Uint64Var(&f.rev, "revision", 0, "expected current revision (0: the key must not exist)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// ErrRevisionConflict is returned when the document changed since the
// revision the push was based on.
var ErrRevisionConflict = errors.New("revision conflict: the document changed, fetch it and retry")

func casPut(ctx context.Context, kv jetstream.KeyValue, key string, doc []byte, rev uint64, explicit bool) (uint64, error) {
	if !explicit {
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev = 0
		case err != nil:
			return 0, fmt.Errorf("fleet: read %s: %w", key, err)
		default:
			rev = e.Revision()
		}
	}
	var (
		n   uint64
		err error
	)
	if rev == 0 {
		n, err = kv.Create(ctx, key, doc)
	} else {
		n, err = kv.Update(ctx, key, doc, rev)
	}
	var apiErr *jetstream.APIError
	if errors.Is(err, jetstream.ErrKeyExists) || errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return 0, fmt.Errorf("fleet: %s: %w", key, ErrRevisionConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("fleet: write %s: %w", key, err)
	}
	return n, nil
}

func newFleetStatusCommand() *cobra.Command {
	var f fleetFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what each agent applied: revision, hash, state, error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			kv, closeConn, err := f.open(ctx, f.conn.StatusBucket)
			if err != nil {
				return err
			}
			defer closeConn()
			sts, err := readStatuses(ctx, kv)
			if err != nil {
				return err
			}
			return printStatuses(cmd.OutOrStdout(), sts, asJSON)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per agent")
	return cmd
}

func readStatuses(ctx context.Context, kv jetstream.KeyValue) ([]FleetStatus, error) {
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: list status: %w", err)
	}
	sort.Strings(keys)
	var out []FleetStatus
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue // deleted meanwhile
		}
		var st FleetStatus
		if err := json.Unmarshal(e.Value(), &st); err != nil {
			st = FleetStatus{Agent: k, State: "unreadable", Error: err.Error()}
		}
		out = append(out, st)
	}
	return out, nil
}

func printStatuses(w io.Writer, sts []FleetStatus, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, st := range sts {
			if err := enc.Encode(st); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tSTATE\tDOCUMENT\tREVISION\tSHA256\tTIME\tVERSION\tERROR")
	for _, st := range sts {
		sum := st.SHA256
		if len(sum) > 12 {
			sum = sum[:12]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", st.Agent, st.State, st.Key, st.Revision, sum,
			st.Time.Format(time.RFC3339), st.Version, st.Error)
	}
	return tw.Flush()
}
