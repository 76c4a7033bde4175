package forwarder

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	active      *prometheus.GaugeVec
	records     *prometheus.CounterVec
	messages    *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	errors      *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	panics      prometheus.Counter
	failovers   prometheus.Counter
	ackedSeq    prometheus.Gauge
	sinkNames   []string
}

// newMetrics registers the forwarder's metrics; sinkNames are the label
// values of the sink label: the configured sinks and none.
func newMetrics(reg prometheus.Registerer, states *stateClock, sinkNames []string) (*metrics, error) {
	m := &metrics{sinkNames: sinkNames,
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bgpedge_forwarder_active_sink",
			Help: "1 for the sink currently draining the spool (none: no sink connected).",
		}, []string{"sink"}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_records_total",
			Help: "Spool records fully acknowledged by a sink.",
		}, []string{"sink"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_messages_total",
			Help: "Output messages acknowledged by a sink (added every forwarder.ack_interval).",
		}, []string{"sink"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_bytes_total",
			Help: "Value bytes of output messages acknowledged by a sink (added every forwarder.ack_interval).",
		}, []string{"sink"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_sink_errors_total",
			Help: "Sink sessions that failed, by sink and reason (connect, write).",
		}, []string{"sink", "reason"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_dead_letters_total",
			Help: "Records that could not be encoded, by outcome (sent to the dlq stream, or dropped with the dlq disabled).",
		}, []string{"outcome"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_encoder_panics_total",
			Help: "Records whose encoder panicked; each is handled like a record that cannot be encoded (dead letter).",
		}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_failovers_total",
			Help: "Times the forwarder switched to a later sink of forwarder.sinks (Kafka to NATS JetStream, for example).",
		}),
		ackedSeq: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bgpedge_forwarder_acked_seq",
			Help: "Highest spool seq below which everything is delivered.",
		}),
	}
	cs := []prometheus.Collector{m.active, m.records, m.messages, m.bytes, m.errors, m.deadLetters, m.failovers, m.ackedSeq, m.panics}
	for _, s := range sinkNames {
		m.active.WithLabelValues(s)
		m.records.WithLabelValues(s)
		m.messages.WithLabelValues(s)
		m.bytes.WithLabelValues(s)
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "bgpedge_forwarder_state_seconds_total",
			Help:        "Time spent with each sink active.",
			ConstLabels: prometheus.Labels{"sink": s},
		}, func() float64 { return states.seconds(s) }))
	}
	m.active.WithLabelValues(SinkNone).Set(1)
	for _, o := range []string{"sent", "dropped"} {
		m.deadLetters.WithLabelValues(o)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("forwarder metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) setActive(name string) {
	for _, s := range m.sinkNames {
		v := 0.0
		if s == name {
			v = 1
		}
		m.active.WithLabelValues(s).Set(v)
	}
}
