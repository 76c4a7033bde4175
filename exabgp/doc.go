// Package exabgp runs bgpedge as an exaBGP process (`bgpedge exabgp`, started
// by exaBGP's `run`).
//
// It owns three paths:
//
//   - Ingest: a reader goroutine takes exaBGP's stdin line by line, hands JSON
//     events to a bounded in-memory queue without ever waiting on the spool
//     (a process that stops reading stalls all of exaBGP), and a spooler
//     group-appends them to this instance's durable spool as raw lines
//     (record.KindExaBGP). Acks and other command output never reach the spool.
//   - Encoding (on the way out, in the forwarder): Encoder parses a line —
//     exaBGP 4.2 and 5.x shapes, compact mode, packets/consolidate hex, the
//     invalid JSON 4.2.21 writes for refresh/operational, full uint64
//     extended-community values — and normalises updates into the same
//     route-event schema as BMP (record.Event, one event per prefix), emitted
//     as record.Output on the streams Streams declares.
//   - Commands: route commands from central arrive by NATS request/reply, are
//     checked against a local Policy, written to exaBGP's stdin one at a time
//     and answered with exaBGP's ack (or a timeout); announced routes are kept
//     in a durable Journal and announced again after restarts.
//
// The spool, the forwarder and the HTTP endpoints of the process are a
// pipeline (package pipeline) that `bgpedge exabgp` configures; this package
// gets its spool through Options.OpenSpool.
//
// docs/exabgp.md describes the behaviour, the configuration and its trade-offs.
package exabgp
