package buffer

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons for dropped records; a fixed set so the label stays bounded.
const (
	dropCapacity = "capacity"
	dropAge      = "age"
	dropCorrupt  = "corrupt"
)

type metrics struct {
	appendDuration   prometheus.Histogram
	commitDuration   prometheus.Histogram
	syncDuration     prometheus.Histogram
	batchRecords     prometheus.Histogram
	appended         prometheus.Counter
	dropped          *prometheus.CounterVec
	quarantined      prometheus.Counter
	commitErrors     *prometheus.CounterVec
	ackPersistErrors prometheus.Counter
	blocked          prometheus.Counter

	registered []prometheus.Collector
}

func newMetrics() *metrics {
	m := &metrics{
		appendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bgpedge_buffer_append_duration_seconds",
			Help:    "Time from Append being called to its records being durable (includes waiting for capacity).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}),
		commitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bgpedge_buffer_commit_duration_seconds",
			Help:    "Time of one group commit (bbolt put, write and fsync).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bgpedge_buffer_sync_duration_seconds",
			Help:    "Time of the fdatasync that ends one group commit: the disk's share of the commit time.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}),
		batchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bgpedge_buffer_commit_batch_records",
			Help:    "Records coalesced into one group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_buffer_appended_records_total",
			Help: "Records made durable in the spool.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_buffer_dropped_records_total",
			Help: "Unacknowledged records removed without delivery, by reason (capacity, age, corrupt).",
		}, []string{"reason"}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_buffer_quarantined_segments_total",
			Help: "Segment files that failed to open or verify and were renamed aside.",
		}),
		commitErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_buffer_commit_errors_total",
			Help: "Group commits that failed, by reason (full: disk full or file size limit; io: anything else).",
		}, []string{"reason"}),
		ackPersistErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_buffer_ack_persist_errors_total",
			Help: "Failed writes of the ack watermark; acknowledged segments stay on disk until one succeeds.",
		}),
		blocked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_buffer_append_blocked_total",
			Help: "Append calls that had to wait for capacity (policy block).",
		}),
	}
	for _, r := range []string{dropCapacity, dropAge, dropCorrupt} {
		m.dropped.WithLabelValues(r)
	}
	for _, r := range []string{"full", "io"} {
		m.commitErrors.WithLabelValues(r)
	}
	return m
}

// collectors lists everything registered for one spool; the gauges are
// computed at scrape time from the spool's state.
func (m *metrics) collectors(s *Spool) []prometheus.Collector {
	return []prometheus.Collector{
		m.appendDuration, m.commitDuration, m.syncDuration, m.batchRecords, m.appended, m.dropped, m.quarantined, m.commitErrors, m.ackPersistErrors, m.blocked,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bgpedge_buffer_records",
			Help: "Unacknowledged records in the spool.",
		}, func() float64 { return float64(s.counts().Records) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bgpedge_buffer_bytes",
			Help: "Bytes of segment files on disk.",
		}, func() float64 { return float64(s.counts().Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bgpedge_buffer_segments",
			Help: "Segment files in use.",
		}, func() float64 { return float64(s.counts().Segments) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bgpedge_buffer_oldest_record_age_seconds",
			Help: "Age (by receive time) of the oldest unacknowledged record; 0 when empty.",
		}, func() float64 { return s.oldestAge().Seconds() }),
	}
}

func (m *metrics) register(s *Spool, reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	m.registered = m.collectors(s)
	for i, c := range m.registered {
		if err := reg.Register(c); err != nil {
			for _, done := range m.registered[:i] {
				reg.Unregister(done)
			}
			m.registered = nil
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return fmt.Errorf("register metrics (one open spool per registerer): %w", err)
			}
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// unregister lets a spool be closed and opened again with the same registerer.
func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.registered {
		reg.Unregister(c)
	}
	m.registered = nil
}
