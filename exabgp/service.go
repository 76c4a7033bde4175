package exabgp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
		rep.Result, rep.Reason = ResultRejected, err.Error()
		return rep
	}
	rep.Command = c.Line
	if c.Announce && !s.journal.Has(c.Key) && s.journal.Len() >= s.maxRoutes {
		rep.Result, rep.Reason = ResultRejected, fmt.Sprintf("rejected: max_routes (%d) injected routes reached", s.maxRoutes)
		return rep
	}
	if !s.limiter.Allow() {
		rep.Result, rep.Reason = ResultRejected, "rejected: rate limit exceeded"
		return rep
	}
	res := s.cmd.Do(ctx, c.Line)
	rep.Result, rep.Reason = res.result, res.reason
	if res.result != ResultDone || c.Key == "" {
		return rep
	}
	if c.Announce {
		err = s.journal.Put(JournalEntry{Key: c.Key, Verb: c.Verb, Neighbors: c.Neighbors, Body: c.Body, RequestID: req.ID, Added: time.Now().UTC(), Request: req})
	} else {
		err = s.journal.Delete(c.Key)
	}
	s.m.injected.Set(float64(s.journal.Len()))
	if err != nil {
		// exaBGP applied it; the desired state on disk is now stale.
		rep.Result, rep.Reason = ResultError, "applied by exabgp but not journaled: "+err.Error()
		s.log.Error("journal update failed", "err", err)
	}
	return rep
}

// replay announces journaled routes again: all of them as journaled when
// neighbor is "", else those that apply to neighbor, scoped to it.
func (s *service) replay(ctx context.Context, neighbor string) {
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
		s.m.replayed.Inc()
		if res.result != ResultDone {
			s.log.Warn("replay of injected route not acknowledged", "command", line, "result", res.result, "reason", res.reason)
		}
		if ctx.Err() != nil {
			return
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
func ConnectNATS(cfg NATSConfig, name string, log *slog.Logger) (*nats.Conn, error) {
	if cfg.URL == "" {
		return nil, ErrNoNATSURL
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(2 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
	}
	switch {
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey: %w", err)
		}
		opts = append(opts, o)
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.TLSCA != "" || cfg.TLSCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSCA != "" {
			pem, err := os.ReadFile(cfg.TLSCA)
			if err != nil {
				return nil, fmt.Errorf("nats tls ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("nats tls ca %s: no certificate", cfg.TLSCA)
			}
			tc.RootCAs = pool
		}
		if cfg.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("nats tls cert: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	return nc, nil
}
