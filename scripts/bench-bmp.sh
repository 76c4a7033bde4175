#!/bin/sh
# BMP ingest benchmark: replays a capture with N concurrent sessions into
# (1) the bgpedge BMP station spooling to a real buffer spool, and
# (2) a plain TCP sink that appends to one file and fsyncs after every read,
# each in its own process (bmp/internal/benchstation), the sender in a third;
# (3) the shipped binary, `bgpedge run` with configs/bgpedge.yaml (only the
# spool directory, ports and state directory changed, forwarder off).
# Prints each side's JSON result line: messages/s, CPU seconds, peak RSS.
# For the binary, time is the sender's (first connect to the last session
# closed by the station, which it does once the session's last batch is
# durable), CPU and peak RSS are the process's, start-up included.
#
#   scripts/bench-bmp.sh [capture] [sessions]
#   BENCH_DIR=/var/tmp/x scripts/bench-bmp.sh   # where spool and sink file go
set -eu
cd "$(dirname "$0")/.."
FILE=${1:-../shared/bmpdata/raw/gobgp-3.10-all-dump-100k.bmp.gz}
SESSIONS=${2:-14}
DIR=${BENCH_DIR:-$(mktemp -d)}
mkdir -p "$DIR"
BIN="$DIR/benchstation"
go build -o "$BIN" ./bmp/internal/benchstation

run() { # mode, extra args...
	mode=$1
	shift
	# A result of an earlier run in a reused BENCH_DIR must not be read
	# as this one's address.
	rm -f "$DIR/$mode.out"
	"$BIN" "$mode" -listen 127.0.0.1:0 -sessions "$SESSIONS" "$@" >"$DIR/$mode.out" &
	pid=$!
	while [ ! -s "$DIR/$mode.out" ]; do sleep 0.05; done
	addr=$(head -n 1 "$DIR/$mode.out")
	"$BIN" replay -to "$addr" -file "$FILE" -sessions "$SESSIONS"
	wait "$pid"
	tail -n 1 "$DIR/$mode.out"
}

echo "capture: $FILE, sessions: $SESSIONS, dir: $DIR ($(stat -f -c %T "$DIR"))"
echo "machine: $(nproc) CPUs, $(uname -r), $(go version | cut -d' ' -f3)"
rm -rf "$DIR/spool"
run station -spool "$DIR/spool" ${STATION_FLAGS:-}
rm -f "$DIR/sink.data"
run sink -file "$DIR/sink.data"
rm -rf "$DIR/spool" "$DIR/sink.data"

go build -o "$DIR/bgpedge" ./cmd/bgpedge
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BGPEDGE_BUFFER_DIR="$DIR/spool" BGPEDGE_AGENT_STATE_DIR="$DIR/state" \
	BGPEDGE_BMP_ENCODING_STATE_DIR="$DIR/state/bmp" BGPEDGE_EXABGP_STATE_DIR="$DIR/state/exabgp" \
	BGPEDGE_BMP_LISTEN="127.0.0.1:$port" BGPEDGE_HTTP_LISTEN=127.0.0.1:0 \
	BGPEDGE_FORWARDER_ENABLED=false BGPEDGE_LOG_LEVEL=warn \
	"$DIR/bgpedge" run --config configs/bgpedge.yaml 2>"$DIR/bgpedge.log" &
pid=$!
tries=0
until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null; do
	tries=$((tries + 1))
	if [ "$tries" -gt 200 ] || ! kill -0 "$pid" 2>/dev/null; then
		echo "bgpedge run did not start:" >&2
		cat "$DIR/bgpedge.log" >&2
		kill "$pid" 2>/dev/null || true
		exit 1
	fi
	sleep 0.05
done
out=$("$BIN" replay -to "127.0.0.1:$port" -file "$FILE" -sessions "$SESSIONS")
echo "$out"
ticks=$(getconf CLK_TCK)
cpu=$(awk -v t="$ticks" '{printf "%.2f", ($14 + $15) / t}' "/proc/$pid/stat")
hwm=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
kill -TERM "$pid"
wait "$pid" || true
echo "$out" | awk -v cpu="$cpu" -v hwm="$hwm" '{
	for (i = 1; i <= NF; i++) {
		if ($(i + 1) == "messages,") msgs = $i
		if ($(i + 1) == "messages/s") rate = $i
		if ($i == "in") secs = $(i + 1)
	}
	sub(/s:$/, "", secs)
	printf "{\"mode\":\"bgpedge run\",\"messages\":%s,\"seconds\":%s,\"messages_per_second\":%s,\"cpu_seconds\":%s,\"peak_rss_mib\":%s,\"config\":\"configs/bgpedge.yaml\"}\n", msgs, secs, rate, cpu, hwm
}'
rm -rf "$DIR/spool" "$DIR/state"
