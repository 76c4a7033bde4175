package exabgp

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"time"
)

// commander writes commands to exaBGP and matches its acks.
//
// Matching rule: exaBGP answers the commands of one process in the order it
// completes them, and some commands are never answered. bgpedge therefore
// keeps at most ONE command outstanding: the next command is written only
// after the previous one was answered, or timed out and then sat as a
// "ghost" for one more ack_timeout. An ack that arrives during the ghost
// period is the late answer of the timed-out command: counted as late and
// handed to that command's late hook (DoLate), never credited to the next
// command. An ack later than 2×ack_timeout, or an ack nobody waits for, is
// counted as unmatched. Commands are rare (central's route changes), so serialising
// them costs little: exaBGP acks an announce in well under a millisecond.
type commander struct {
	out     *bufio.Writer
	timeout time.Duration
	reqs    chan *pendingCmd
	acks    chan Ack
	m       *metrics
	log     *slog.Logger
	// stalled reports whether the stdin reader is blocked on a full queue.
	// Acks are read by that reader, so a command written then could only
	// time out, and its ack, read after the stall, would answer a later
	// command: commands wait for the stall to end (or their caller to give
	// up) before they are written.
	stalled func() bool
}

type pendingCmd struct {
	ctx  context.Context
	line string
	done chan cmdResult
	// late, if set, gets the ack of a command that timed out but was
	// answered during its ghost period: the caller's state may depend on it
	// (a late done means exaBGP applied the command after all).
	late func(Ack)
}

type cmdResult struct {
	result string // done, error, timeout
	reason string
}

func newCommander(out io.Writer, timeout time.Duration, m *metrics, log *slog.Logger) *commander {
	return &commander{
		out:     bufio.NewWriter(out),
		timeout: timeout,
		reqs:    make(chan *pendingCmd, 256),
		acks:    make(chan Ack, 1024),
		m:       m,
		log:     log,
	}
}

// onAck is called by the stdin reader; it never blocks.
func (c *commander) onAck(a Ack) {
	select {
	case c.acks <- a:
	default:
		c.m.acks.WithLabelValues("unmatched").Inc()
	}
}

// Do writes one command line and waits for its ack, the ack timeout, or ctx.
func (c *commander) Do(ctx context.Context, line string) cmdResult {
	return c.DoLate(ctx, line, nil)
}

// DoLate is Do, and calls late (on the commander's goroutine, so it must not
// call Do) with the ack of a command that timed out if it arrives during the
// ghost period.
func (c *commander) DoLate(ctx context.Context, line string, late func(Ack)) cmdResult {
	p := &pendingCmd{ctx: ctx, line: line, done: make(chan cmdResult, 1), late: late}
	select {
	case c.reqs <- p:
	case <-ctx.Done():
		return cmdResult{ResultTimeout, "not sent: command queue full"}
	}
	select {
	case r := <-p.done:
		return r
	case <-ctx.Done():
		return cmdResult{ResultTimeout, "gave up waiting for exabgp"}
	}
}

func (c *commander) run(ctx context.Context) {
	for {
		var p *pendingCmd
		select {
		case <-ctx.Done():
			return
		case p = <-c.reqs:
		}
		if p.ctx.Err() != nil {
			p.done <- cmdResult{ResultTimeout, "not sent: caller gave up while queued"}
			continue
		}
		if !c.awaitReader(ctx, p) {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		c.drainStray()
		if _, err := c.out.WriteString(p.line + "\n"); err == nil {
			err = c.out.Flush()
			if err != nil {
				p.done <- cmdResult{ResultError, "write to exabgp: " + err.Error()}
				continue
			}
		} else {
			p.done <- cmdResult{ResultError, "write to exabgp: " + err.Error()}
			continue
		}
		timer := time.NewTimer(c.timeout)
		select {
		case a := <-c.acks:
			timer.Stop()
			c.m.acks.WithLabelValues(a.String()).Inc()
			switch a {
			case AckDone:
				p.done <- cmdResult{ResultDone, ""}
			case AckShutdown:
				// Whether exaBGP applied it is unknown, as after a timeout:
				// a journaled announce must stay pending, not be removed.
				p.done <- cmdResult{ResultTimeout, "exabgp is shutting down: outcome unknown"}
			default:
				p.done <- cmdResult{ResultError, "exabgp rejected the command"}
			}
		case <-timer.C:
			p.done <- cmdResult{ResultTimeout, "no ack from exabgp within " + c.timeout.String()}
			c.log.Warn("exabgp did not acknowledge a command", "command", p.line, "timeout", c.timeout)
			ghost := time.NewTimer(c.timeout)
			select {
			case a := <-c.acks:
				ghost.Stop()
				c.m.acks.WithLabelValues("late").Inc()
				if p.late != nil {
					p.late(a)
				}
			case <-ghost.C:
			case <-ctx.Done():
				ghost.Stop()
				return
			}
		case <-ctx.Done():
			timer.Stop()
			p.done <- cmdResult{ResultTimeout, "shutting down before exabgp answered: outcome unknown"}
			return
		}
	}
}

// stallPoll is how often a command waiting for a stalled reader looks again.
const stallPoll = 50 * time.Millisecond

// awaitReader holds p while the stdin reader is stalled. It reports whether
// p may be written; if not, p has been answered (its caller gave up, or the
// process is stopping).
func (c *commander) awaitReader(ctx context.Context, p *pendingCmd) bool {
	if c.stalled == nil {
		return true
	}
	for c.stalled() {
		t := time.NewTimer(stallPoll)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			p.done <- cmdResult{ResultTimeout, "not sent: exabgp's output was not being read (spool stalled) until the caller gave up"}
			return false
		case <-ctx.Done():
			t.Stop()
			p.done <- cmdResult{ResultTimeout, "not sent: shutting down while exabgp's output was not being read"}
			return false
		}
	}
	return true
}

// drainStray discards acks nobody is waiting for (e.g. later than the ghost
// period) so they cannot answer the next command.
func (c *commander) drainStray() {
	for {
		select {
		case <-c.acks:
			c.m.acks.WithLabelValues("unmatched").Inc()
		default:
			return
		}
	}
}
