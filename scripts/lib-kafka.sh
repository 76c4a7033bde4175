# shellcheck shell=bash
# Sourced by benchmark scripts that need a broker: uses the broker of
# scripts/kafka.sh on 127.0.0.1:9092, starting it (and stopping it again when
# the script exits) when it is not running, and exports BGPEDGE_TEST_KAFKA.
kafka_started=false
if ! scripts/kafka.sh status >/dev/null 2>&1; then
	scripts/kafka.sh start
	kafka_started=true
fi
kafka_cleanup() { if $kafka_started; then scripts/kafka.sh stop; fi; }
trap kafka_cleanup EXIT
export BGPEDGE_TEST_KAFKA=${BGPEDGE_TEST_KAFKA:-$(scripts/kafka.sh brokers)}
