package rib

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	routes     prometheus.Gauge
	duplicates *prometheus.CounterVec
	synthetic  prometheus.Counter
	stale      prometheus.Gauge
	commits    prometheus.Histogram
	waits      prometheus.Counter
	waitTime   prometheus.Counter
	registered []prometheus.Collector
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		routes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bgpedge_rib_routes",
			Help: "Routes the route state holds (committed: acknowledged by the sink), all routers, peers and tables.",
		}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_rib_duplicates_total",
			Help: "Announcements identical to the route state, by what bmp.rib.duplicates did with them (drop, mark, keep); counted again when a record is re-delivered.",
		}, []string{"action"}),
		stale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bgpedge_rib_stale_routes",
			Help: "Routes held stale (committed): their peer's session ended without a Peer Down and they were not re-announced, withdrawn or timed out yet.",
		}),
		commits: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bgpedge_rib_commit_seconds",
			Help:    "Time to write one commit part of the route state (one bbolt transaction, synced) and apply it to the index.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_rib_sequence_waits_total",
			Help: "Times the route state's decisions waited for a commit because its overlay of unacknowledged changes was full: the state's commits, not the sink, set the pace then.",
		}),
		waitTime: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_rib_sequence_wait_seconds_total",
			Help: "Time the route state's decisions spent waiting for a commit because its overlay of unacknowledged changes was full (see bgpedge_rib_sequence_waits_total).",
		}),
		synthetic: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_rib_synthetic_withdraws_total",
			Help: "Withdraws the route state synthesised (a Peer Down's routes, stale routes at End-of-RIB or stale_timeout); counted again when a record is re-delivered.",
		}),
	}
	for _, a := range []string{DuplicatesDrop, DuplicatesMark, DuplicatesKeep} {
		m.duplicates.WithLabelValues(a)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.routes, m.duplicates, m.synthetic, m.stale, m.commits, m.waits, m.waitTime} {
		if err := reg.Register(c); err != nil {
			m.unregister(reg)
			return nil, fmt.Errorf("register metrics: %w", err)
		}
		m.registered = append(m.registered, c)
	}
	return m, nil
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range m.registered {
		reg.Unregister(c)
	}
	m.registered = nil
}
