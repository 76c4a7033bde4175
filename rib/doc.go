// Package rib owns bgpedge's route state: per router, peer, table and route,
// the hash of the route's attributes, kept on disk (bbolt) in the state
// directory. The forwarder runs it, in spool order, between the BMP encoder
// and the sinks (forwarder.Sequencer): it drops or marks duplicate
// announcements, withdraws a downed peer's routes synthetically and emits
// the compacted bmp.rib stream. docs/route-state.md explains the design.
package rib
