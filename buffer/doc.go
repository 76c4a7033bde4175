// Package buffer is the spool: a durable, segmented write-ahead buffer on bbolt with group commit, capacity limits, backpressure and acknowledgements.
package buffer
