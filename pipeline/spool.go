package pipeline

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
)

// Spool is what a pipeline needs of the spool: sources append to it, the
// forwarder drains it. *buffer.Spool implements it.
type Spool interface {
	Append(ctx context.Context, recs ...record.Record) (first uint64, err error)
	forwarder.Source
	Close() error
}

var _ Spool = (*buffer.Spool)(nil)

// OpenSpool opens a spool from its `buffer:` settings, every one honoured
// (directory, segment size, capacity, age, policy, group commit,
// keep_acked); a new spool's first seq comes from the clock. It is the one
// place bgpedge opens a spool for writing.
func OpenSpool(cfg buffer.Config, log *slog.Logger, reg prometheus.Registerer) (*buffer.Spool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return buffer.Open(cfg.Options(log, reg))
}
