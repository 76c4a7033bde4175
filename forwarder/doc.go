// Package forwarder drains the spool to Kafka, or to NATS JetStream while Kafka is unreachable, at least once.
package forwarder
