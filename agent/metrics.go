package agent

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type agentMetrics struct {
	applies       *prometheus.CounterVec
	startFailures *prometheus.CounterVec
}

func newAgentMetrics(reg prometheus.Registerer, a *Agent) (*agentMetrics, error) {
	m := &agentMetrics{
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_agent_config_applies_total",
			Help: "Configuration changes applied to the running agent, by result (applied, failed).",
		}, []string{"result"}),
		startFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_agent_start_failures_total",
			Help: "Failed attempts to start a part (spool, bmp, forwarder); the agent retries.",
		}, []string{"part"}),
	}
	for _, r := range []string{"applied", "failed"} {
		m.applies.WithLabelValues(r)
	}
	for _, p := range []string{"spool", "bmp", "forwarder"} {
		m.startFailures.WithLabelValues(p)
	}
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bgpedge_agent_ready",
		Help: "1 when the spool is open, the listener bound and the configuration applied.",
	}, func() float64 {
		if a.Status().Ready {
			return 1
		}
		return 0
	})
	applied := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bgpedge_agent_config_applied_timestamp_seconds",
		Help: "Unix time the current configuration was applied.",
	}, func() float64 {
		t := a.Status().AppliedAt
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	})
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "bgpedge_agent_build_info",
		Help:        "Build information; always 1.",
		ConstLabels: prometheus.Labels{"version": Version, "commit": Commit},
	})
	info.Set(1)
	for _, c := range []prometheus.Collector{m.applies, m.startFailures, ready, applied, info} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// partGatherers holds one registry per running part, so a part rebuilt by
// Apply registers its metrics afresh instead of colliding with its predecessor.
type partGatherers struct {
	mu    sync.Mutex
	parts map[string]*prometheus.Registry
}

func newPartGatherers() *partGatherers {
	return &partGatherers{parts: map[string]*prometheus.Registry{}}
}

func (p *partGatherers) register(name string) *prometheus.Registry {
	r := prometheus.NewRegistry()
	p.set(name, r)
	return r
}

func (p *partGatherers) set(name string, r *prometheus.Registry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.parts[name] = r
}

func (p *partGatherers) unregister(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.parts, name)
}

// Gather implements prometheus.Gatherer.
func (p *partGatherers) Gather() ([]*dto.MetricFamily, error) {
	p.mu.Lock()
	gs := make(prometheus.Gatherers, 0, len(p.parts))
	for _, r := range p.parts {
		gs = append(gs, r)
	}
	p.mu.Unlock()
	return gs.Gather()
}
