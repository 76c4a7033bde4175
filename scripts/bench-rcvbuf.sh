#!/usr/bin/env bash
# bench-rcvbuf.sh — what bmp.socket_receive_buffer_bytes costs and bounds.
#
# A crash (kill -9, OOM, power cut) loses, per BMP session, what the kernel
# held in the socket's receive buffer plus the read batch not yet durable.
# For each setting this measures, with the shipped binary (`bgpedge run`,
# forwarder off, spool on this disk):
#   1. ingest: the 100k-route capture replayed over SESSIONS sessions
#      (messages/s, the sender's clock), interleaved over REPS rounds;
#   2. held: the bytes the kernel holds per session (Recv-Q, from `ss`)
#      once the spool is full under policy block and the sessions stop
#      reading — the most a crash can find in the socket.
#
#   scripts/bench-rcvbuf.sh                       # settings 0 (autotuning) 262144 1048576
#   SETTINGS="0 131072 262144" REPS=5 SESSIONS="1 14" scripts/bench-rcvbuf.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${FILE:-../shared/bmpdata/raw/gobgp-3.10-all-dump-100k.bmp.gz}
read -r -a settings <<<"${SETTINGS:-0 262144 1048576}"
read -r -a sessions_list <<<"${SESSIONS:-1 14}"
REPS=${REPS:-3}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
go build -o "$DIR/bgpedge" ./cmd/bgpedge
go build -o "$DIR/benchstation" ./bmp/internal/benchstation

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_agent SETTING [extra env...]: starts bgpedge run, sets pid and port.
start_agent() {
	local rcv=$1
	shift
	rm -rf "$DIR/spool" "$DIR/state"
	port=$(free_port)
	env "$@" BGPEDGE_BUFFER_DIR="$DIR/spool" BGPEDGE_AGENT_STATE_DIR="$DIR/state" \
		BGPEDGE_BMP_ENCODING_STATE_DIR="$DIR/state/bmp" BGPEDGE_EXABGP_STATE_DIR="$DIR/state/exabgp" \
		BGPEDGE_BMP_LISTEN="127.0.0.1:$port" BGPEDGE_HTTP_LISTEN=127.0.0.1:0 \
		BGPEDGE_BMP_SOCKET_RECEIVE_BUFFER_BYTES="$rcv" \
		BGPEDGE_FORWARDER_ENABLED=false BGPEDGE_LOG_LEVEL=warn \
		"$DIR/bgpedge" run --config configs/bgpedge.yaml 2>"$DIR/bgpedge.log" &
	pid=$!
	local tries=0
	until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null; do
		tries=$((tries + 1))
		if ((tries > 200)) || ! kill -0 "$pid" 2>/dev/null; then
			echo "bgpedge run did not start:" >&2
			cat "$DIR/bgpedge.log" >&2
			exit 1
		fi
		sleep 0.05
	done
}

stop_agent() {
	kill -TERM "$pid"
	wait "$pid" || true
}

echo "capture: $FILE; $(nproc) CPUs, $(uname -r), tcp_rmem: $(cat /proc/sys/net/ipv4/tcp_rmem)"
declare -A rates
for ((r = 1; r <= REPS; r++)); do
	for s in "${sessions_list[@]}"; do
		for rcv in "${settings[@]}"; do
			start_agent "$rcv"
			out=$("$DIR/benchstation" replay -to "127.0.0.1:$port" -file "$FILE" -sessions "$s")
			stop_agent
			rate=$(sed -E 's/.*: ([0-9]+) messages\/s/\1/' <<<"$out")
			rates[$s,$rcv]+="$rate "
			echo "round $r, $s sessions, socket_receive_buffer_bytes=$rcv: $rate messages/s"
		done
	done
done

# held: a spool that blocks at once (2 MiB budget, nothing drains), 4
# sessions streaming; read Recv-Q once it stops growing.
declare -A held
for rcv in "${settings[@]}"; do
	start_agent "$rcv" BGPEDGE_BUFFER_SEGMENT_BYTES=1048576 BGPEDGE_BUFFER_MAX_BYTES=2097152
	"$DIR/benchstation" replay -to "127.0.0.1:$port" -file "$FILE" -sessions 4 -loop 100 >/dev/null 2>&1 &
	rpid=$!
	prev=-1
	for _ in $(seq 1 100); do
		sleep 0.2
		cur=$(ss -Htn state established "( sport = :$port )" | awk '{ if ($1 > m) m = $1 } END { print m + 0 }')
		if [[ $cur -gt 0 && $cur == "$prev" ]]; then
			break
		fi
		prev=$cur
	done
	held[$rcv]=$cur
	kill "$rpid" 2>/dev/null || true
	wait "$rpid" 2>/dev/null || true
	stop_agent
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "| socket_receive_buffer_bytes | sessions | ingest messages/s (median of $REPS; runs) | ratio to autotuning (0) |"
echo "| ---: | ---: | ---: | ---: |"
for s in "${sessions_list[@]}"; do
	base=$(median <<<"${rates[$s,0]:-}")
	for rcv in "${settings[@]}"; do
		m=$(median <<<"${rates[$s,$rcv]}")
		ratio=$(awk -v a="$m" -v b="${base:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
		echo "| $rcv | $s | $m (${rates[$s,$rcv]% }) | $ratio |"
	done
done
echo
echo "| socket_receive_buffer_bytes | kernel-held bytes per session when the spool blocks (largest Recv-Q) |"
echo "| ---: | ---: |"
for rcv in "${settings[@]}"; do
	echo "| $rcv | ${held[$rcv]} |"
done
