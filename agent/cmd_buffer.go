package agent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/buffer"
)

func newBufferCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "buffer",
		Short: "Inspect the spool (read-only; fails with \"in use\" while the agent runs)",
	}
	cmd.AddCommand(newBufferStatsCommand(), newBufferInspectCommand())
	return cmd
}

// bufferStats is the stats output; field names are the JSON keys.
type bufferStats struct {
	Dir          string     `json:"dir"`
	Records      uint64     `json:"records"`
	Bytes        int64      `json:"bytes"`
	Segments     int        `json:"segments"`
	FirstSeq     uint64     `json:"first_seq"`
	LastSeq      uint64     `json:"last_seq"`
	AckedThrough uint64     `json:"acked_through"`
	OldestTime   *time.Time `json:"oldest_time,omitempty"`
	OldestAgeSec float64    `json:"oldest_age_seconds"`
	Quarantined  []string   `json:"quarantined"`
	// Torn lists segments whose last commit a crash left incomplete: they
	// are counted as of the commit before, which `bgpedge run` rolls back
	// to. Unreadable lists segments left out because they do not verify
	// (`bgpedge run` quarantines them).
	Torn       []string `json:"torn_last_commit"`
	Unreadable []string `json:"unreadable"`
}

func openSpoolReadOnly(dir string) (*buffer.Spool, error) {
	s, err := buffer.Open(buffer.Options{Dir: dir, ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	return s, nil
}

func newBufferStatsCommand() *cobra.Command {
	var dir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Records, bytes, segments, first/last seq and oldest record age of a spool",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := openSpoolReadOnly(dir)
			if err != nil {
				return err
			}
			defer s.Close()
			st := s.Stats()
			q, err := buffer.Quarantined(dir)
			if err != nil {
				return err
			}
			out := bufferStats{Dir: dir, Records: st.Records, Bytes: st.Bytes, Segments: st.Segments,
				FirstSeq: st.FirstSeq, LastSeq: st.LastSeq, AckedThrough: st.AckedThrough, Quarantined: q}
			out.Torn, out.Unreadable = st.TornSegments, st.UnreadableSegments
			for _, l := range []*[]string{&out.Quarantined, &out.Torn, &out.Unreadable} {
				if *l == nil {
					*l = []string{}
				}
			}
			if !st.OldestTime.IsZero() {
				t := st.OldestTime.UTC()
				out.OldestTime = &t
				out.OldestAgeSec = max(0, time.Since(t).Seconds())
			}
			w := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "dir\t%s\n", out.Dir)
			fmt.Fprintf(tw, "records\t%d\n", out.Records)
			fmt.Fprintf(tw, "bytes\t%d\n", out.Bytes)
			fmt.Fprintf(tw, "segments\t%d\n", out.Segments)
			fmt.Fprintf(tw, "first_seq\t%d\n", out.FirstSeq)
			fmt.Fprintf(tw, "last_seq\t%d\n", out.LastSeq)
			fmt.Fprintf(tw, "acked_through\t%d\n", out.AckedThrough)
			if out.OldestTime != nil {
				fmt.Fprintf(tw, "oldest_age\t%s (received %s)\n",
					time.Duration(out.OldestAgeSec*float64(time.Second)).Round(time.Second), out.OldestTime.Format(time.RFC3339Nano))
			} else {
				fmt.Fprintf(tw, "oldest_age\t-\n")
			}
			fmt.Fprintf(tw, "quarantined\t%d\n", len(out.Quarantined))
			for _, seg := range out.Torn {
				fmt.Fprintf(tw, "torn_last_commit\t%s (counted as of the commit before; bgpedge run rolls it back)\n", seg)
			}
			for _, seg := range out.Unreadable {
				fmt.Fprintf(tw, "unreadable\t%s (left out; bgpedge run quarantines it)\n", seg)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "dir", buffer.DefaultConfig().Dir, "spool directory (buffer.dir)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newBufferInspectCommand() *cobra.Command {
	var dir string
	var from uint64
	var limit int
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "List records of a spool: seq, kind, key, size, receive time",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit <= 0 {
				return fmt.Errorf("--limit must be positive")
			}
			s, err := openSpoolReadOnly(dir)
			if err != nil {
				return err
			}
			defer s.Close()
			if from == 0 {
				from = s.FirstUnacked()
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tKIND\tKEY\tSIZE\tTIME")
			for shown := 0; shown < limit; {
				recs, err := s.Read(cmd.Context(), from, min(limit-shown, 1000))
				if err != nil {
					return fmt.Errorf("read: %w", err)
				}
				if len(recs) == 0 {
					break
				}
				for _, r := range recs {
					ts := "-"
					if !r.Time.IsZero() {
						ts = r.Time.UTC().Format(time.RFC3339Nano)
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", r.Seq, r.Kind, printableKey(r.Key), len(r.Payload), ts)
				}
				shown += len(recs)
				from = recs[len(recs)-1].Seq + 1
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "dir", buffer.DefaultConfig().Dir, "spool directory (buffer.dir)")
	cmd.Flags().Uint64Var(&from, "from", 0, "first seq to show (default: first unacknowledged)")
	cmd.Flags().IntVar(&limit, "limit", 20, "records to show")
	return cmd
}

// printableKey shows a partitioning key as text, as an IP address when it
// is 4 or 16 raw bytes, or else as hex.
func printableKey(k []byte) string {
	if len(k) == 0 {
		return "-"
	}
	text := true
	for _, c := range string(k) {
		if c == unicode.ReplacementChar || !unicode.IsPrint(c) || c == ' ' {
			text = false
			break
		}
	}
	if text {
		return string(k)
	}
	if a, ok := netip.AddrFromSlice(k); ok {
		return a.Unmap().String()
	}
	return fmt.Sprintf("%x", k)
}
