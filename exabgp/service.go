package exabgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/time/rate"
)

// service applies route commands: policy, rate and count limits, exaBGP, journal.
type service struct {
	policy    *Policy
	maxRoutes int
	journal   *Journal
	cmd       *commander
	limiter   *rate.Limiter
	m         *metrics
	log       *slog.Logger
}

// handle answers one request. Requests are handled one at a time (the NATS
// subscription delivers serially), which keeps central's order.
func (s *service) handle(ctx context.Context, req *Request) Reply {
	rep := s.apply(ctx, req)
	verb := req.Verb
	if verb != VerbList && !slices.Contains(allVerbs, verb) {
		verb = "unknown"
	}
	s.m.commands.WithLabelValues(verb, rep.Result).Inc()
	if rep.Result == ResultRejected {
		s.log.Info("route command rejected", "id", req.ID, "verb", req.Verb, "reason", rep.Reason)
	}
	return rep
}

func (s *service) apply(ctx context.Context, req *Request) Reply {
	rep := Reply{ID: req.ID}
	if req.Verb == VerbList {
		rep.Result = ResultOK
		rep.Routes = s.journal.Entries()
		return rep
	}
	c, err := s.policy.Check(req)
	if err != nil {
		s.m.rejected.WithLabelValues(RejectReason(err)).Inc()
		rep.Result, rep.Reason = ResultRejected, err.Error()
		return rep
	}
	rep.Command = c.Line
	prev, hadPrev := JournalEntry{}, false
	if c.Key != "" {
		prev, hadPrev = s.journal.Get(c.Key)
	}
	// Pending entries count: a timed-out announce may be live in exaBGP.
	if c.Announce && !hadPrev && s.journal.Len() >= s.maxRoutes {
		s.m.rejected.WithLabelValues(RejectMaxRoutes).Inc()
		rep.Result, rep.Reason = ResultRejected, fmt.Sprintf("rejected: max_routes (%d) injected routes reached", s.maxRoutes)
		return rep
	}
	if !s.limiter.Allow() {
		s.m.rejected.WithLabelValues(RejectRate).Inc()
		rep.Result, rep.Reason = ResultRejected, "rejected: rate limit exceeded"
		return rep
	}
	switch {
	case c.Key == "":
		res := s.cmd.Do(ctx, c.Line)
		rep.Result, rep.Reason = res.result, res.reason
	case c.Announce:
		s.announce(ctx, req, c, prev, hadPrev, &rep)
	default:
		s.withdraw(ctx, c, prev, hadPrev, &rep)
	}
	s.gauges()
	return rep
}

// announce journals the entry as pending BEFORE writing it to exaBGP, so a
// command exaBGP applies after its ack timed out is never live and unknown
// to list, replays and max_routes; exaBGP's answer then confirms it (done),
// or drops it again (error: exaBGP did not apply it).
func (s *service) announce(ctx context.Context, req *Request, c *Command, prev JournalEntry, hadPrev bool, rep *Reply) {
	ent := JournalEntry{Key: c.Key, Verb: c.Verb, Neighbors: c.Neighbors, Body: c.Body, RequestID: req.ID,
		Added: time.Now().UTC(), Request: req, Pending: true}
	if err := s.journal.Put(ent); err != nil {
		rep.Result, rep.Reason = ResultError, "not sent to exabgp: cannot journal: "+err.Error()
		s.log.Error("journal update failed", "err", err)
		return
	}
	res := s.cmd.DoLate(ctx, c.Line, func(a Ack) { s.settle(ent, prev, hadPrev, a, true) })
	rep.Result, rep.Reason = res.result, res.reason
	switch res.result {
	case ResultDone:
		s.settle(ent, prev, hadPrev, AckDone, false)
	case ResultError:
		s.settle(ent, prev, hadPrev, AckError, false)
	default:
		s.log.Warn("injected route kept as pending: exabgp may still apply it", "key", c.Key, "id", req.ID, "reason", res.reason)
	}
}

// settle applies exaBGP's answer to a pending entry, unless a later command
// has replaced it meanwhile.
func (s *service) settle(ent, prev JournalEntry, hadPrev bool, a Ack, late bool) {
	var next *JournalEntry
	switch a {
	case AckDone:
		ok := ent
		ok.Pending = false
		next = &ok
	case AckError:
		if hadPrev {
			next = &prev // exaBGP still has what the previous command set
		}
	default:
		return // shutting down: unknown, stays pending
	}
	changed, err := s.journal.Resolve(ent, next)
	if err != nil {
		s.log.Error("journal update failed; entry stays pending", "key", ent.Key, "err", err)
	}
	if late && changed {
		s.log.Info("late ack settled a pending injected route", "key", ent.Key, "ack", a.String())
		s.gauges()
	}
}

func (s *service) withdraw(ctx context.Context, c *Command, cur JournalEntry, had bool, rep *Reply) {
	res := s.cmd.DoLate(ctx, c.Line, func(a Ack) {
		if a != AckDone || !had {
			return
		}
		if changed, err := s.journal.Resolve(cur, nil); err != nil {
			s.log.Error("journal update failed", "key", cur.Key, "err", err)
		} else if changed {
			s.log.Info("late ack of a withdraw removed the injected route", "key", cur.Key)
			s.gauges()
		}
	})
	rep.Result, rep.Reason = res.result, res.reason
	if res.result != ResultDone {
		return
	}
	if err := s.journal.Delete(c.Key); err != nil {
		// exaBGP applied it; the desired state on disk is now stale.
		rep.Result, rep.Reason = ResultError, "applied by exabgp but not journaled: "+err.Error()
		s.log.Error("journal update failed", "err", err)
	}
}

func (s *service) gauges() {
	s.m.injected.Set(float64(s.journal.Len()))
	s.m.pending.Set(float64(s.journal.Pending()))
}

// replay announces journaled routes again, pending ones included (at worst
// exaBGP rejects one again, logged and counted): all of them as journaled
// when neighbor is "", else those that apply to neighbor, scoped to it.
func (s *service) replay(ctx context.Context, neighbor string) {
	s.gauges()
	for _, e := range s.journal.Entries() {
		if e.Request != nil {
			// The policy may have been narrowed since: replay only what it still allows.
			if _, err := s.policy.Check(e.Request); err != nil {
				s.log.Warn("journaled route no longer allowed by policy: not announced again (withdraw it to remove it)", "key", e.Key, "reason", err)
				continue
			}
		}
		line := e.Line()
		if neighbor != "" {
			if len(e.Neighbors) > 0 && !slices.Contains(e.Neighbors, neighbor) {
				continue
			}
			line = withSelector([]string{neighbor}, e.Body)
		}
		res := s.cmd.Do(ctx, line)
		if ctx.Err() != nil {
			return // gave up at shutdown: not exaBGP's answer
		}
		s.m.replayed.WithLabelValues(res.result).Inc()
		if res.result != ResultDone {
			s.log.Warn("replay of injected route not acknowledged", "command", line, "result", res.result, "reason", res.reason)
			continue
		}
		if e.Pending && line == e.Line() {
			// The very command that timed out, now acked: it is live.
			s.settle(e, JournalEntry{}, false, AckDone, false)
			s.gauges()
		}
	}
}

// serveNATS answers requests on subject until ctx ends.
func (s *service) serveNATS(ctx context.Context, nc *nats.Conn, subject string) error {
	sub, err := nc.Subscribe(subject, func(msg *nats.Msg) {
		var req Request
		var rep Reply
		if err := json.Unmarshal(msg.Data, &req); err != nil {
			rep = Reply{Result: ResultRejected, Reason: "rejected: invalid request JSON: " + err.Error()}
			s.m.commands.WithLabelValues("unknown", ResultRejected).Inc()
			s.m.rejected.WithLabelValues(RejectInvalid).Inc()
		} else {
			rep = s.handle(ctx, &req)
		}
		b, _ := json.Marshal(rep)
		if msg.Reply != "" {
			if err := msg.Respond(b); err != nil {
				s.log.Warn("cannot answer route command", "id", req.ID, "err", err)
			}
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subject, err)
	}
	<-ctx.Done()
	if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return err
	}
	return nil
}

// ErrNoNATSURL is returned when commands are enabled without a NATS URL.
var ErrNoNATSURL = errors.New("no nats url")

// ConnectNATS connects with the configured authentication; it keeps
// retrying in the background, so a central outage never fails the process.
// extra options come last and override these (the CLI turns the retry off,
// so a wrong URL or credentials fail at once).
func ConnectNATS(cfg NATSConfig, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if cfg.URL == "" {
		return nil, ErrNoNATSURL
	}
	opts := []nats.Option{
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(2 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
	}
	conn, err := cfg.Options(name)
	if err != nil {
		return nil, err
	}
	opts = append(conn, opts...)
	nc, err := nats.Connect(cfg.URL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	return nc, nil
}
