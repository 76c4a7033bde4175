#!/bin/sh
# BMP ingest benchmark: replays a capture with N concurrent sessions into
# (1) the bgpedge BMP station spooling to a real buffer spool, and
# (2) a plain TCP sink that appends to one file and fsyncs after every read,
# each in its own process (bmp/internal/benchstation), the sender in a third.
# Prints each side's JSON result line: messages/s, CPU seconds, peak RSS.
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
