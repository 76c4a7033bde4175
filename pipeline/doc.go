// Package pipeline owns what every bgpedge command that moves records is
// made of: the spool (opened from the buffer.* settings, every one
// honoured), the encoders that turn its records into outputs, the
// forwarder that drains it, the HTTP endpoints (/metrics, /healthz,
// /readyz, optional pprof) and the ordered shutdown with deadlines — inputs
// stopped, then the forwarder flushed, then the spool closed, each bounded.
//
// `bgpedge run` (package agent, which keeps configuration, reload and
// fleet), `bgpedge exabgp` and `bgpedge bridge` each configure one; no other
// code opens a spool for writing or builds a forwarder.
package pipeline
