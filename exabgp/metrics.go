package exabgp

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	lines          *prometheus.CounterVec // kind: event, ack, output, empty
	truncated      prometheus.Counter
	queueDropped   prometheus.Counter
	readerBlocked  prometheus.Counter
	spooled        prometheus.Counter
	spoolErrors    *prometheus.CounterVec // op: open, append
	spoolAvailable prometheus.Gauge
	lost           prometheus.Counter
	commands       *prometheus.CounterVec // verb, result
	acks           *prometheus.CounterVec // result: done, error, shutdown, unmatched, late
	injected       prometheus.Gauge
	pending        prometheus.Gauge
	replayed       *prometheus.CounterVec // result: done, error, timeout
	rejected       *prometheus.CounterVec // reason: the Reject* constants
	journalFaults  *prometheus.CounterVec // reason: corrupt, unreadable
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		lines: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bgpedge_exabgp_lines_total",
			Help: "Lines read from exaBGP, by kind (event, ack, output, empty)."}, []string{"kind"}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{Name: "bgpedge_exabgp_lines_truncated_total",
			Help: "Lines longer than exabgp.max_line_bytes, spooled truncated."}),
		queueDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "bgpedge_exabgp_queue_dropped_total",
			Help: "Events dropped because the queue was full (queue_policy drop)."}),
		readerBlocked: prometheus.NewCounter(prometheus.CounterOpts{Name: "bgpedge_exabgp_reader_blocked_seconds_total",
			Help: "Time the stdin reader waited for queue space (queue_policy block); exaBGP stalls meanwhile."}),
		spooled: prometheus.NewCounter(prometheus.CounterOpts{Name: "bgpedge_exabgp_spooled_records_total",
			Help: "Events made durable in the spool."}),
		spoolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bgpedge_exabgp_spool_errors_total",
			Help: "Failed spool operations (retried), by op (open, append)."}, []string{"op"}),
		spoolAvailable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bgpedge_exabgp_spool_available",
			Help: "1 while the spool is open, 0 while running degraded without it."}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{Name: "bgpedge_exabgp_lost_records_total",
			Help: "Queued events abandoned at shutdown because the spool could not take them."}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bgpedge_exabgp_commands_total",
			Help: "Route commands from central, by verb and result (done, error, timeout, rejected, ok)."}, []string{"verb", "result"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bgpedge_exabgp_acks_total",
			Help: "Acknowledgements read from exaBGP, by how they were matched (done, error, shutdown, unmatched, late)."}, []string{"result"}),
		injected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bgpedge_exabgp_injected_routes",
			Help: "Routes and flows in the journal of injected routes."}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bgpedge_exabgp_injected_routes_pending",
			Help: "Journaled routes and flows written to exaBGP and not (yet) acked done, e.g. after an ack timeout."}),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bgpedge_exabgp_replayed_routes_total",
			Help: "Journaled routes announced again after a restart or a session coming up, by exaBGP's answer (done, error, timeout)."}, []string{"result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bgpedge_exabgp_commands_rejected_total",
			Help: "Route commands rejected before reaching exaBGP, by reason (verb, neighbor, prefix, prefix_length, next_hop, max_routes, rate, invalid)."}, []string{"reason"}),
		journalFaults: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bgpedge_exabgp_journal_faults_total",
			Help: "Journals of injected routes found at start that could not be used, by reason: corrupt (set aside, started empty), unreadable (route commands off)."}, []string{"reason"}),
	}
	for _, r := range []string{"corrupt", "unreadable"} {
		m.journalFaults.WithLabelValues(r)
	}
	for _, r := range []string{ResultDone, ResultError, ResultTimeout} {
		m.replayed.WithLabelValues(r) // exported at 0 from the start
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.lines, m.truncated, m.queueDropped, m.readerBlocked, m.spooled,
		m.spoolErrors, m.spoolAvailable, m.lost, m.commands, m.acks, m.injected, m.pending, m.replayed, m.rejected, m.journalFaults} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// registerQueueDepth exports the events read and not yet durable, read at
// scrape time so the gauge moves while the spool is stuck, too. A process
// replacing another on the same registry takes the gauge over.
func registerQueueDepth(reg prometheus.Registerer, depth func() float64) error {
	if reg == nil {
		return nil
	}
	g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "bgpedge_exabgp_queue_lines",
		Help: "Events read from exaBGP and not yet durable in the spool."}, depth)
	reg.Unregister(g)
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	return nil
}
