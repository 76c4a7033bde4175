#!/usr/bin/env bash
# exaBGP ingest benchmark (docs/BENCHMARKS.md, section "exaBGP ingest"):
# stdin → durable spool with a synthetic feed, line normalisation, and the
# end-to-end path GoBGP → Debian exaBGP → `bgpedge exabgp` → spool, and on
# to Kafka (the broker of scripts/kafka.sh, started when not running).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-kafka.sh
cmd=(go test -run '^$' -bench 'IngestToSpool|Encode' -benchtime 300000x ./exabgp/)
echo "\$ ${cmd[*]}"
"${cmd[@]}"
cmd=(go test -run '^$' -bench 'ExaBGPEndToEnd' -benchtime 1x ./exabgp/)
echo "\$ ${cmd[*]}"
"${cmd[@]}"
