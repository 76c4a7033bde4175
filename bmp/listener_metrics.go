package bmp

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Session close reasons: the complete set of values of the reason label of
// bgpedge_bmp_sessions_closed_total (plus the framing reasons of FrameError).
const (
	CloseEOF               = "eof"                // the router closed the connection between messages
	CloseReadError         = "read-error"         // reset or other socket error
	CloseInitiationTimeout = "initiation-timeout" // no whole first message in time
	CloseIdleTimeout       = "idle-timeout"       // silent for longer than idle_timeout
	CloseShutdown          = "shutdown"           // the listener was closed
	CloseSpoolFailed       = "spool-failed"       // appending gave up at the shutdown deadline
	ClosePartialTimeout    = "partial-timeout"    // a message not whole within partial_timeout of its first byte
	CloseBufferBudget      = "buffer-budget"      // no read-buffer budget to hold a message within 2×partial_timeout
	CloseTooManyPeers      = "too-many-peers"     // more peers up at once than max_peers
)

// Refusal reasons of bgpedge_bmp_sessions_refused_total.
const (
	RefuseNotAllowed  = "not-allowed"
	RefuseMaxSessions = "max-sessions"
)

// numTypes is the number of message-type label values: the seven RFC types and "unknown".
const numTypes = 8

func typeIndex(t byte) int {
	if t < 7 {
		return int(t)
	}
	return 7
}

type metrics struct {
	active        prometheus.Gauge
	accepted      prometheus.Counter
	refused       *prometheus.CounterVec
	closed        *prometheus.CounterVec
	framingErrors *prometheus.CounterVec
	messages      [numTypes]prometheus.Counter
	bytes         [numTypes]prometheus.Counter
	appendSeconds prometheus.Histogram
	appendErrors  prometheus.Counter
	syntheticDown prometheus.Counter
	orderWaits    prometheus.Counter
	journalErrors prometheus.Counter
	dropped       prometheus.Counter
	budgetWaits   prometheus.Counter
	// gauges read from the budget's atomics at scrape time, so buffer
	// changes cost no metric update
	bufferBytes, budgetUsed, budgetLimit prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, b *bufferBudget) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bgpedge_bmp_sessions_active",
			Help: "BMP router sessions currently open.",
		}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_sessions_accepted_total",
			Help: "BMP connections accepted as router sessions.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_bmp_sessions_refused_total",
			Help: "BMP connections closed right after accept, by reason (not-allowed, max-sessions).",
		}, []string{"reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_bmp_sessions_closed_total",
			Help: "BMP sessions ended, by reason (eof, read-error, initiation-timeout, idle-timeout, shutdown, spool-failed, partial-timeout, buffer-budget, too-many-peers, or a framing reason: bad-version, short-length, long-length, truncated).",
		}, []string{"reason"}),
		framingErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_bmp_framing_errors_total",
			Help: "Byte streams that were not valid BMP, by reason (each closes its session).",
		}, []string{"reason"}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bgpedge_bmp_append_duration_seconds",
			Help:    "Time a session waited for the spool to make a batch durable, retries included; long waits are backpressure.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}),
		appendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_append_errors_total",
			Help: "Failed spool appends; the batch is retried and the session stops reading meanwhile.",
		}),
		syntheticDown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_synthetic_peer_downs_total",
			Help: "Synthetic peer-down records spooled for peers still up when their session ended (with peers that sent routes without a Peer Up).",
		}),
		orderWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_session_order_waits_total",
			Help: "Flushes of a session that waited for an earlier session of the same router to end, so that the earlier one's synthetic peer-downs are spooled first.",
		}),
		journalErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_session_journal_errors_total",
			Help: "Failed writes to the session journal (the peers each session has up, kept so a crash of bgpedge can be followed by synthetic peer-downs); spooling goes on.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_messages_dropped_total",
			Help: "Messages read from a router but not spooled because the shutdown deadline passed while the spool refused them.",
		}),
		budgetWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_bmp_read_buffer_budget_waits_total",
			Help: "Times a session had to stop reading because buffer_budget_bytes was used up when it needed a larger buffer to hold a message.",
		}),
		bufferBytes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bgpedge_bmp_read_buffer_bytes",
			Help: "Read-buffer memory held by sessions, the first 16 KiB of each included.",
		}, func() float64 { return float64(b.total.Load()) }),
		budgetUsed: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bgpedge_bmp_read_buffer_budget_used_bytes",
			Help: "Read-buffer memory counted against buffer_budget_bytes (each session's buffer above its first 16 KiB).",
		}, func() float64 { return float64(b.used.Load()) }),
		budgetLimit: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bgpedge_bmp_read_buffer_budget_bytes",
			Help: "Configured buffer_budget_bytes.",
		}, func() float64 { return float64(b.limit) }),
	}
	msgs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bgpedge_bmp_messages_received_total",
		Help: "BMP messages received and spooled, by message type.",
	}, []string{"type"})
	byts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bgpedge_bmp_received_bytes_total",
		Help: "Bytes of BMP messages received and spooled, by message type.",
	}, []string{"type"})
	for i := range numTypes {
		name := MsgType(i).String()
		m.messages[i] = msgs.WithLabelValues(name)
		m.bytes[i] = byts.WithLabelValues(name)
	}
	// Pre-create the bounded label values so dashboards see zeros, not gaps.
	for _, r := range []string{RefuseNotAllowed, RefuseMaxSessions} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range []string{ReasonBadVersion, ReasonShortLength, ReasonLongLength, ReasonTruncated} {
		m.framingErrors.WithLabelValues(r)
		m.closed.WithLabelValues(r)
	}
	for _, r := range []string{CloseEOF, CloseReadError, CloseInitiationTimeout, CloseIdleTimeout, CloseShutdown, CloseSpoolFailed, ClosePartialTimeout, CloseBufferBudget, CloseTooManyPeers} {
		m.closed.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.active, m.accepted, m.refused, m.closed, m.framingErrors, msgs, byts,
		m.appendSeconds, m.appendErrors, m.syntheticDown, m.orderWaits, m.journalErrors, m.dropped,
		m.budgetWaits, m.bufferBytes, m.budgetUsed, m.budgetLimit,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
