#!/usr/bin/env bash
# Forwarder benchmark (docs/BENCHMARKS.md, section "Forwarder"): drain of
# spooled ~200 B records to Kafka against Kafka's own ProducerPerformance
# (same record count and size, acks=all, idempotence on, same partition
# count) in the same run; route events per second through the bmp encoder;
# drain rate to NATS JetStream (embedded server).
#
#   scripts/bench-forwarder.sh                 # 5,000,000 records
#   BGPEDGE_BENCH_RECORDS=1000000 scripts/bench-forwarder.sh
#   BGPEDGE_BENCH=BenchmarkDrainKafka scripts/bench-forwarder.sh   # Kafka drain only
#
# The Kafka drain runs ProducerPerformance just before and just after the
# drain and reports the forwarder's rate against their mean, with the
# forwarder's CPU per record (robust to the load of a shared machine).
# BGPEDGE_BENCH_PROGRESS=1 prints the drain rate every second;
# BGPEDGE_BENCH_CPUPROFILE=file profiles the drain alone.
#
# Uses the broker of scripts/kafka.sh on 127.0.0.1:9092, starting it (and
# stopping it again at the end) when it is not running.
set -euo pipefail
cd "$(dirname "$0")/.."

export BGPEDGE_BENCH_RECORDS=${BGPEDGE_BENCH_RECORDS:-5000000}
source scripts/lib-kafka.sh

bench=${BGPEDGE_BENCH:-BenchmarkDrainKafka|BenchmarkDrainBMPJSON|BenchmarkDrainJetStream|BenchmarkSpoolReadAck}
cmd=(go test -run '^$' -bench "$bench" -benchtime 1x -timeout 60m ./forwarder/)
echo "\$ BGPEDGE_BENCH_RECORDS=$BGPEDGE_BENCH_RECORDS ${cmd[*]}"
echo "before: $(uptime)"
"${cmd[@]}" | grep -v '^time='
echo "after: $(uptime)"
