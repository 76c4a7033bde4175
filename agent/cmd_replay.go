package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/spf13/cobra"
)

func newReplayCommand() *cobra.Command {
	var (
		file      string
		to        string
		rate      float64
		loop      int
		sessions  int
		drain     time.Duration
		reconnect time.Duration
	)
	cmd := &cobra.Command{
		Use:   "replay --file F --to HOST:PORT",
		Short: "Send a BMP capture (raw stream, gzip, pcap or pcapng) to a BMP station",
		Long: `Replay sends recorded BMP traffic to a BMP station over TCP: a raw BMP byte
stream (optionally gzip-compressed) as one session, or a pcap/pcapng capture
with one session per router TCP stream found in it.

--sessions S opens S copies of every stream at once; on a loopback target each
connection binds its own source address in 127.0.0.0/8 (127.0.0.10 upwards,
then 127.0.1.1 and on: up to 16 million), so the station sees
S distinct routers. After sending, replay half-closes each connection and
waits (--drain) for the station to close it, which bgpedge does once it has
spooled the session.

--reconnect D makes replay behave like a router whose station goes away: when
the station refuses the connections or drops a session, replay waits D,
connects again and sends every stream again from its start (a router
re-establishing a BMP session sends Initiation, Peer Up and its tables
again). It goes on until every stream has been sent in full once, or until
it is interrupted (SIGINT, SIGTERM), which ends it normally with the summary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" || to == "" {
				return fmt.Errorf("replay: --file and --to are required")
			}
			if rate < 0 || loop < 1 || sessions < 1 || reconnect < 0 {
				return fmt.Errorf("replay: --rate and --reconnect must be ≥ 0, --loop and --sessions ≥ 1")
			}
			if _, _, err := net.SplitHostPort(to); err != nil {
				return fmt.Errorf("replay: --to: %w", err)
			}
			streams, err := bmp.LoadReplayFile(file)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			opts := bmp.ReplayOptions{
				Streams:      streams,
				Target:       to,
				Rate:         rate,
				Loop:         loop,
				Sessions:     sessions,
				DrainTimeout: drain,
			}
			tty := isTerminal(out)
			if tty {
				opts.Progress = func(sent, total uint64) { drawProgress(out, sent, total) }
			}
			stats, err := replayReconnecting(cmd.Context(), opts, reconnect, cmd.ErrOrStderr())
			if tty {
				fmt.Fprintln(out)
			}
			fmt.Fprintf(out, "sent %d messages (%d bytes) in %d sessions in %.3fs: %.0f messages/s",
				stats.Messages, stats.Bytes, stats.Sessions, stats.Duration.Seconds(), stats.MessagesPerSecond())
			if reconnect > 0 {
				fmt.Fprintf(out, ", %d reconnects", stats.Reconnects)
			}
			fmt.Fprintln(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "file", "", "capture to send: raw BMP stream (.bmp, .gz) or pcap/pcapng")
	f.StringVar(&to, "to", "", "station address host:port")
	f.Float64Var(&rate, "rate", 0, "total messages per second over all sessions (0: as fast as possible)")
	f.IntVar(&loop, "loop", 1, "send each stream this many times per session")
	f.IntVar(&sessions, "sessions", 1, "concurrent copies of every stream")
	f.DurationVar(&drain, "drain", 30*time.Second, "after sending, wait this long for the station to close each session (0: do not wait)")
	f.DurationVar(&reconnect, "reconnect", 0, "when the station is unreachable or drops a session, wait this long and send everything again from the start, until done or interrupted (0: fail instead)")
	return cmd
}

// replayTotals sums the attempts of a reconnecting replay.
type replayTotals struct {
	bmp.ReplayStats
	Reconnects int
}

// replayReconnecting runs bmp.Replay; with reconnect > 0 it starts over
// after a connection failure (refused, reset, broken pipe) until one attempt
// completes, and treats cancellation of ctx as the normal end. Other errors
// (a station that does not close a drained session in time) end it as they
// end a single replay.
func replayReconnecting(ctx context.Context, opts bmp.ReplayOptions, reconnect time.Duration, stderr io.Writer) (replayTotals, error) {
	if reconnect <= 0 {
		stats, err := bmp.Replay(ctx, opts)
		return replayTotals{ReplayStats: stats}, err
	}
	var total replayTotals
	start := time.Now()
	refused := false // the previous attempt could not connect: log that once
	for {
		stats, err := bmp.Replay(ctx, opts)
		total.Sessions += stats.Sessions
		total.Messages += stats.Messages
		total.Bytes += stats.Bytes
		total.Duration = time.Since(start)
		if err == nil {
			return total, nil
		}
		if ctx.Err() != nil {
			return total, nil // interrupted: the way a reconnecting replay ends early
		}
		if !stationGone(err) {
			return total, err
		}
		if !refused || stats.Sessions > 0 {
			fmt.Fprintf(stderr, "replay: %v; reconnecting every %v\n", err, reconnect)
		}
		refused = stats.Sessions == 0
		t := time.NewTimer(reconnect)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			total.Duration = time.Since(start)
			return total, nil
		}
		total.Reconnects++
	}
}

// isTerminal reports whether w is a character device (a terminal), where a
// progress bar is welcome; pipes and files get the summary line only.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func drawProgress(w io.Writer, sent, total uint64) {
	const width = 40
	frac := 1.0
	if total > 0 {
		frac = float64(sent) / float64(total)
	}
	n := int(frac * width)
	fmt.Fprintf(w, "\r[%s%s] %3.0f%% %d/%d messages", strings.Repeat("=", n), strings.Repeat(" ", width-n), frac*100, sent, total)
}

// stationGone reports whether err is the station refusing, resetting or
// closing the connection: what a reconnect can cure. A local address that
// cannot be bound or a name that does not resolve is not.
func stationGone(err error) bool {
	for _, e := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE, io.EOF, io.ErrUnexpectedEOF} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
