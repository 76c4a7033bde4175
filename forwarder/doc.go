// Package forwarder drains the spool to its sinks — Kafka, NATS JetStream,
// files — chosen by role (forwarder.sinks), at least once. Package pipeline
// builds it (with the streams the sources declare, Config.Topics.Streams);
// it knows no source.
//
// It owns the seams around that: Source (what it needs of the spool),
// Encoder (records to record.Output messages; packages bmp and exabgp
// implement it, Raw sends a declared raw stream as spooled), and Sink
// (Connect/Write/Close, with a per-message ack), and the
// sinks: KafkaSink (lanes that build their own produce requests, acks from
// all in-sync replicas, one request per broker in flight, retriable errors
// retried per partition in order; kafka_lane.go), NATSSink (JetStream async
// publish with every PubAck checked and Nats-Msg-Id set) and FileSink (one
// directory per stream, JSON lines or raw BMP, fsync'd before the ack;
// docs/file-sink.md).
//
// Delivery: a record is acknowledged to the spool only when every one of its
// output messages was acknowledged, and only as part of the contiguous
// prefix of such records (the watermark). When a message fails, the sink
// session ends, what is in flight settles, and the next session re-reads from
// the watermark: later records that already arrived are sent again. So
// delivery is at least once; duplicates carry the same id
// ("<agent-id>:<seq>[:<index>]", Kafka header bgpedge-id, NATS
// Nats-Msg-Id, the id of a JSON event in a file) for consumers to drop. A
// record that cannot be encoded goes, raw, to the dlq stream with the error
// in a header; it never blocks the queue.
//
// Pipeline: reading the next batch from the spool, encoding the one before
// and handing the one before that to the sink overlap. An encoder wrapped in
// Parallel encodes on up to forwarder.encoders goroutines, a record that
// changes decoding state (Parallel.Ordered: a BMP Peer Up) alone; outputs
// reach the sink in spool order either way, so one router's events, and
// one key's messages, keep their order. What waits for acknowledgements is
// bounded in messages (max_in_flight) and in bytes (max_in_flight_bytes).
//
// Sinks by role: forwarder.sinks lists the sinks, most preferred first, and
// every sink is built from it through one table (sinks.go: name → validate,
// build), so a new sink is a row there, its file and its configuration
// block. The first sink that connects drains; after forwarder.failover_after
// of failures the next one does, while the earlier ones are probed, and the
// first of them healthy for forwarder.failback_after takes over again. With
// every sink down the spool grows and the list is retried from its start
// with exponential backoff and jitter. Each sink bounds its own connect and
// probe (Timeouts). The Bridge moves what went to JetStream into Kafka,
// acknowledging JetStream only after Kafka did.
//
// JetStream acknowledges a publish once the message is in the stream's
// store, which nats-server fsyncs only every sync_interval (2 minutes by
// default): a power loss of a single JetStream server can lose acknowledged
// messages. Use a replicated stream (forwarder.nats.replicas: 3) or a
// shorter sync_interval on the server.
package forwarder
