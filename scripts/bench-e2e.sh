#!/usr/bin/env bash
# Decoded end-to-end benchmark (docs/BENCHMARKS.md, "End to end"): replays a
# BMP capture over TCP with 1 and 14 sessions into
#   json    bgpedge run, JSON events only (bmp.encoding.raw=false)
#   json-rib  the same with the route state on (bmp.rib.enabled=true; not in
#           the default MODES): compare its events/s with json's
#   raw     bgpedge run, raw BMP only (bmp.encoding.json=false)
#   both    bgpedge run with the shipped defaults (raw and JSON)
#   pmbmpd  pmacct's pmbmpd (Debian), JSON message log to Kafka
#   perf    Kafka's own ProducerPerformance with the record count and mean
#           value size of json's output in the same repetition
# all against the same broker, repetitions interleaved, and prints one table
# of medians: events/s, CPU µs per event, peak RSS (VmHWM) and peak
# anonymous RSS (RssAnon, sampled every 20 ms), ratios to pmbmpd and to
# ProducerPerformance.
#
# Time runs from the first byte sent until Kafka acknowledged the last
# output: for bgpedge, the spool holds every message sent and none is left
# unacknowledged (polled on /metrics every 50 ms); for pmbmpd, the last
# growth of its topic's end offsets (the run ends after 3 s without growth).
# CPU is the process's user+system time over that span; for bgpedge runs the
# broker's (kafka.sh's) is reported beside it, from just before the replay
# starts until the measurement ends, since it shares the machine's CPUs
# (topic creation and deletion left out). Events: for json and
# both, the route events decoded (bgpedge_bmp_route_events_total); for raw,
# the raw messages; for pmbmpd, every message it wrote (route events plus a
# few peer, stats and log-init/close messages); perf: its records.
# bgpedge runs with configs/bgpedge.yaml, only paths, ports, topic prefix and
# the encoding switches changed.
#
# Then, once, MANY_SESSIONS (1000) routers stream at once from distinct
# loopback addresses, each sending MANY_FILE MANY_LOOP times, into bgpedge
# run with the default encoding: ingest rate (messages sent / time until all
# were in the spool, polled every 50 ms), drain rate (messages acknowledged
# by Kafka / time until the spool was empty), RssAnon and VmHWM.
#
#   scripts/bench-e2e.sh
#   REPS=1 SESSIONS="1" MODES="json pmbmpd perf" scripts/bench-e2e.sh
#   FILE=capture.bmp BENCH_DIR=/var/tmp/e2e scripts/bench-e2e.sh
#   MANY_SESSIONS=0 scripts/bench-e2e.sh   # without the many-sessions run
#   PPROF=1 scripts/bench-e2e.sh   # CPU profile (first PPROF_SECONDS, 8) and
#                                  # heap profile (at the end) of each bgpedge run
#   PPROF=1 PPROF_HEAP_AT=10 ...   # also the live heap 10 s into each run
#   MEASURE_TIMEOUT=60m SESSIONS=34 MODES=json-rib MANY_SESSIONS=0 REPS=1 \
#     scripts/bench-e2e.sh   # 34 routers' tables (10.2 M routes) in the route state
#   BASE=main scripts/bench-e2e.sh # also run bgpedge built from git revision
#                                  # BASE (json, json-rib, raw, both) with that revision's
#                                  # configs/bgpedge.yaml, interleaved, for
#                                  # before/after rows measured in one sitting
#
# Each bgpedge run leaves BENCH_DIR/metrics-<mode>-<sessions>-<rep>.txt, the
# agent's /metrics at the end (route state waits and commit times, for one).
#
# Needs pmacct (apt-get install pmacct) for the pmbmpd rows. Uses the broker
# of scripts/kafka.sh on 127.0.0.1:9092, starting it (and stopping it again at
# the end) when it is not running.
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=${FILE:-../shared/bmpdata/raw/gobgp-3.10-all-dump-100k.bmp.gz}
REPS=${REPS:-3}
SESSIONS=${SESSIONS-1 14}
MODES=${MODES-json raw both pmbmpd perf}
PPROF=${PPROF:-}
MANY_SESSIONS=${MANY_SESSIONS:-1000}
MANY_FILE=${MANY_FILE:-../shared/bmpdata/raw/gobgp-3.10.0-loopback.bmp}
MANY_LOOP=${MANY_LOOP:-20}
MEASURE_TIMEOUT=${MEASURE_TIMEOUT:-10m} # a bgpedge run not drained by then fails
# json-rib: the replay ends its sessions once sent, which makes the routers'
# routes stale; a drain longer than bmp.rib.stale_timeout would withdraw
# them (each a walk of the peer's routes) before the run ends. Routes held
# and memory are measured with the routers' tables in place.
RIB_STALE_TIMEOUT=${RIB_STALE_TIMEOUT:-24h}
DIR=${BENCH_DIR:-$(mktemp -d)}
mkdir -p "$DIR"
results=$DIR/results.jsonl
: >"$results"

source scripts/lib-kafka.sh
brokers=$BGPEDGE_TEST_KAFKA

go build -o "$DIR/bgpedge" ./cmd/bgpedge
BASE=${BASE:-}
if [[ -n $BASE ]]; then
	rm -rf "$DIR/base-src" && mkdir -p "$DIR/base-src"
	git archive "$BASE" | tar -x -C "$DIR/base-src"
	(cd "$DIR/base-src" && go build -o "$DIR/bgpedge-base" ./cmd/bgpedge)
	base_rev=$(git rev-parse --short "$BASE")
fi
go build -o "$DIR/e2ebench" ./internal/e2ebench
bench=$DIR/e2ebench
run_id=e2e-$(date +%s)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for PID CMD…: polls CMD every 50 ms for up to 60 s while PID lives.
wait_for() {
	local tries=0 pid=$1
	shift
	until "$@"; do
		tries=$((tries + 1))
		if [[ $tries -gt 1200 ]] || ! kill -0 "$pid" 2>/dev/null; then return 1; fi
		sleep 0.05
	done
}

stop_pid() { # pid signal
	kill "-$2" "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# record MODE SESSIONS REP JSON: adds the fields the table groups by.
record() {
	jq -c --arg mode "$1" --argjson s "$2" --argjson rep "$3" '. + {mode: $mode, sessions_asked: $s, rep: $rep}' <<<"$4" | tee -a "$results"
}

# proc_cpu PID: the process's user+system CPU seconds so far (0 when gone).
proc_cpu() {
	local tck
	tck=$(getconf CLK_TCK)
	awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo 0
}
broker_pid() { scripts/kafka.sh status 2>/dev/null | awk '/running pid/ { print $3 }'; }

# broker_cpu_field JSON BEFORE PID: adds the broker's CPU µs per event over
# the run (it shares the machine's CPUs, so it bounds what bgpedge can reach).
broker_cpu_field() {
	local after
	[[ -n $3 ]] || { echo "$1"; return; }
	after=$(proc_cpu "$3")
	jq -c --argjson b "$2" --argjson a "$after" \
		'. + {broker_cpu_seconds: ($a - $b)} + (if .events > 0 then {broker_cpu_us_per_event: (($a - $b) * 1e6 / .events)} else {} end)' <<<"$1"
}

bgpedge_ready() { curl -sf "http://127.0.0.1:$1/readyz" | grep -q '"kafka"'; }

run_bgpedge() { # mode sessions rep [file loop]; mode json, json-rib, raw, both, many, or one of them with -base
	local mode=$1 s=$2 rep=$3 file=${4:-$FILE} loop=${5:-1} raw=true json=true rib=false bin=$DIR/bgpedge
	local config=configs/bgpedge.yaml
	if [[ $mode == *-base ]]; then # the base revision with its own shipped defaults
		bin=$DIR/bgpedge-base config=$DIR/base-src/configs/bgpedge.yaml
	fi
	case ${mode%-base} in
	json) raw=false ;;
	json-rib) raw=false rib=true ;;
	raw) json=false ;;
	esac
	local port hport prefix out pid pprof=false
	if [[ -n $PPROF ]]; then pprof=true; fi
	port=$(free_port)
	hport=$(free_port)
	prefix=$run_id-$rep-$s-$mode.
	rm -rf "$DIR/spool" "$DIR/state"
	BGPEDGE_BUFFER_DIR="$DIR/spool" BGPEDGE_AGENT_STATE_DIR="$DIR/state" \
		BGPEDGE_BMP_ENCODING_STATE_DIR="$DIR/state/bmp" BGPEDGE_EXABGP_STATE_DIR="$DIR/state/exabgp" \
		BGPEDGE_BMP_LISTEN="127.0.0.1:$port" BGPEDGE_HTTP_LISTEN="127.0.0.1:$hport" \
		BGPEDGE_HTTP_PPROF=$pprof \
		BGPEDGE_BMP_ENCODING_RAW=$raw BGPEDGE_BMP_ENCODING_JSON=$json BGPEDGE_BMP_RIB_ENABLED=$rib \
		BGPEDGE_BMP_RIB_STALE_TIMEOUT=$RIB_STALE_TIMEOUT \
		BGPEDGE_FORWARDER_KAFKA_BROKERS="$brokers" BGPEDGE_FORWARDER_TOPICS_PREFIX="$prefix" \
		BGPEDGE_LOG_LEVEL=warn \
		"$bin" run --config "$config" 2>"$DIR/bgpedge-$mode-$s-$rep.log" &
	pid=$!
	if ! wait_for "$pid" bgpedge_ready "$hport" || ! wait_for "$pid" port_open "$port"; then
		echo "bgpedge run did not get ready:" >&2
		cat "$DIR/bgpedge-$mode-$s-$rep.log" >&2
		stop_pid "$pid" KILL
		return 1
	fi
	local prof= bpid bcpu=0
	bpid=$(broker_pid)
	if [[ -n $bpid ]]; then bcpu=$(proc_cpu "$bpid"); fi
	if [[ -n $PPROF ]]; then
		curl -sf -o "$DIR/cpu-$mode-$s-$rep.pprof" "http://127.0.0.1:$hport/debug/pprof/profile?seconds=${PPROF_SECONDS:-8}" &
		prof=$!
		if [[ -n ${PPROF_HEAP_AT:-} ]]; then # live heap mid-run, not only at the end
			(sleep "$PPROF_HEAP_AT" && curl -sf -o "$DIR/heap-mid-$mode-$s-$rep.pprof" "http://127.0.0.1:$hport/debug/pprof/heap") &
		fi
	fi
	out=$("$bench" measure -pid "$pid" -to "127.0.0.1:$port" -file "$file" -sessions "$s" -loop "$loop" \
		-metrics "http://127.0.0.1:$hport/metrics" -timeout "$MEASURE_TIMEOUT")
	out=$(broker_cpu_field "$out" "$bcpu" "$bpid")
	# The agent's own counters at the end (route state waits, commit times).
	curl -sf -o "$DIR/metrics-$mode-$s-$rep.txt" "http://127.0.0.1:$hport/metrics" || true
	if [[ $rib == true ]]; then # the route state's file, once drained
		out=$(jq -c --argjson b "$(stat -c %s "$DIR/state/rib.db")" '. + {rib_file_bytes: $b}' <<<"$out")
	fi
	if [[ -n $prof ]]; then
		wait "$prof" || true
		curl -sf -o "$DIR/heap-$mode-$s-$rep.pprof" "http://127.0.0.1:$hport/debug/pprof/heap" || true
	fi
	stop_pid "$pid" TERM
	"$bench" topic delete -brokers "$brokers" "$prefix"
	record "$mode" "$s" "$rep" "$out"
}

run_pmbmpd() { # sessions rep
	local s=$1 rep=$2 port topic conf pid out
	port=$(free_port)
	topic=$run_id-$rep-$s-pmbmpd
	conf=$DIR/pmbmpd.conf
	"$bench" topic create -brokers "$brokers" -partitions 6 "$topic"
	cat >"$conf" <<-EOF
		daemonize: false
		logfile: $DIR/pmbmpd-$s-$rep.log
		bmp_daemon_ip: 127.0.0.1
		bmp_daemon_port: $port
		bmp_daemon_max_peers: $((s + 16))
		bmp_daemon_msglog_output: json
		bmp_daemon_msglog_kafka_broker_host: ${brokers%:*}
		bmp_daemon_msglog_kafka_broker_port: ${brokers##*:}
		bmp_daemon_msglog_kafka_topic: $topic
	EOF
	pmbmpd -f "$conf" >/dev/null 2>&1 &
	pid=$!
	if ! wait_for "$pid" port_open "$port"; then
		echo "pmbmpd did not listen:" >&2
		cat "$DIR/pmbmpd-$s-$rep.log" >&2 || true
		stop_pid "$pid" KILL
		return 1
	fi
	out=$("$bench" measure -pid "$pid" -to "127.0.0.1:$port" -file "$FILE" -sessions "$s" \
		-brokers "$brokers" -topics "$topic")
	# pmbmpd ignores SIGTERM.
	stop_pid "$pid" INT
	"$bench" topic delete -brokers "$brokers" "$topic"
	record pmbmpd "$s" "$rep" "$out"
}

run_perf() { # sessions rep
	local s=$1 rep=$2 ref n size topic out rate
	ref=$(jq -c --argjson s "$s" 'select(.mode == "json" and .sessions_asked == $s)' "$results" | tail -n 1)
	if [[ -z $ref ]]; then
		echo "perf: no json row for $s sessions to take the record count and size from" >&2
		return 1
	fi
	n=$(jq -r '.kafka_messages | floor' <<<"$ref")
	size=$(jq -r '.value_bytes / .kafka_messages | round' <<<"$ref")
	topic=$run_id-$rep-$s-perf
	"$bench" topic create -brokers "$brokers" -partitions 6 "$topic"
	out=$(scripts/kafka.sh perf --topic "$topic" --num-records "$n" --record-size "$size" --throughput -1 \
		--producer-props "bootstrap.servers=$brokers" acks=all enable.idempotence=true max.in.flight.requests.per.connection=5 2>&1)
	"$bench" topic delete -brokers "$brokers" "$topic"
	rate=$(grep -oE '[0-9]+ records sent, [0-9.]+ records/sec' <<<"$out" | tail -n 1 | awk '{print $4}')
	if [[ -z $rate ]]; then
		echo "ProducerPerformance output not understood:" >&2
		echo "$out" >&2
		return 1
	fi
	record perf "$s" "$rep" "$(jq -nc --argjson n "$n" --argjson size "$size" --argjson rate "$rate" \
		'{events: $n, record_bytes: $size, events_per_second: $rate}')"
}

echo "capture: $FILE; sessions: $SESSIONS; repetitions: $REPS; modes: $MODES; dir: $DIR"
echo "bgpedge: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ' (uncommitted changes)')${BASE:+; base: $BASE ($base_rev)}"
echo "machine: $(nproc) CPUs, $(uname -r), $(go version | cut -d' ' -f3), $(pmbmpd -V 2>&1 | head -n 1 || true)"
echo "before: $(uptime)"
for rep in $(seq 1 "$REPS"); do
	for s in $SESSIONS; do
		for mode in $MODES; do
			case $mode in
			json | json-rib | raw | both)
				run_bgpedge "$mode" "$s" "$rep"
				if [[ -n $BASE ]]; then run_bgpedge "$mode-base" "$s" "$rep"; fi
				;;
			pmbmpd) run_pmbmpd "$s" "$rep" ;;
			perf) run_perf "$s" "$rep" ;;
			*) echo "unknown mode $mode" >&2 && exit 2 ;;
			esac
		done
	done
done
if [[ $MANY_SESSIONS -gt 0 ]]; then
	echo "many sessions: $MANY_SESSIONS sessions of $MANY_FILE, each sent $MANY_LOOP times, default encoding (raw + JSON)"
	run_bgpedge many "$MANY_SESSIONS" 1 "$MANY_FILE" "$MANY_LOOP"
fi
echo "after: $(uptime)"

# The table: medians per mode and session count.
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(mode, s, key):
    v = [r[key] for r in rows if r["mode"] == mode and r["sessions_asked"] == s and key in r]
    return statistics.median(v) if v else None
names = {"json": "bgpedge run, JSON only", "json-rib": "bgpedge run, JSON only, route state on", "raw": "bgpedge run, raw only",
         "both": "bgpedge run, raw + JSON (default)", "pmbmpd": "pmacct pmbmpd",
         "perf": "Kafka ProducerPerformance"}
for m in ["json", "json-rib", "raw", "both"]:
    names[m + "-base"] = names[m] + ", base revision"
many = [r for r in rows if r["mode"] == "many"]
rows = [r for r in rows if r["mode"] != "many"]
sessions = sorted({r["sessions_asked"] for r in rows})
modes = [m for m in ["json", "json-base", "json-rib", "json-rib-base", "raw", "raw-base", "both", "both-base", "pmbmpd", "perf"] if any(r["mode"] == m for r in rows)]
n = max((len([r for r in rows if r["mode"] == m and r["sessions_asked"] == s]) for m in modes for s in sessions), default=0)
if n:
    print(f"\nmedians of {n} runs")
    print("| sessions | collector | events | events/s | CPU µs/event | broker CPU µs/event | VmHWM MiB | peak RssAnon MiB | vs pmbmpd | vs ProducerPerformance |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
fmt = lambda v, f: "–" if v is None else f.format(v)
for s in sessions:
    pm, pp = med("pmbmpd", s, "events_per_second"), med("perf", s, "events_per_second")
    for m in modes:
        rate = med(m, s, "events_per_second")
        if rate is None:
            continue
        print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            s, names[m], fmt(med(m, s, "events"), "{:,.0f}"), fmt(rate, "{:,.0f}"),
            fmt(med(m, s, "cpu_us_per_event"), "{:.2f}"), fmt(med(m, s, "broker_cpu_us_per_event"), "{:.2f}"),
            fmt(med(m, s, "vmhwm_mib"), "{:.0f}"),
            fmt(med(m, s, "peak_rss_anon_mib"), "{:.0f}"),
            fmt(rate / pm if pm else None, "{:.2f}×"), fmt(rate / pp if pp else None, "{:.2f}×")))
agent = [m for m in modes if m not in ("pmbmpd", "perf")]
if n and agent:
    print("\nbgpedge's heap allocations over the same runs (medians; its Go collector):")
    print("| sessions | collector | bytes allocated per event | allocations per event | GC cycles |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for s in sessions:
        for m in agent:
            if med(m, s, "alloc_bytes_per_event") is None:
                continue
            print("| {} | {} | {:,.0f} | {:.2f} | {:.0f} |".format(s, names[m], med(m, s, "alloc_bytes_per_event"),
                  med(m, s, "allocs_per_event"), med(m, s, "gc_cycles")))
for r in many:
    print(f"\n{r['sessions']} sessions at once, {r['sent_messages']:,} messages: sent in {r['sent_seconds']:.1f} s, "
          f"spooled {r['sent_messages'] / r['ingest_seconds']:,.0f} messages/s ({r['ingest_seconds']:.1f} s), drained to Kafka {r['kafka_messages'] / r['seconds']:,.0f} messages/s "
          f"({r['kafka_messages']:,.0f} messages, {r['events']:,.0f} route events, {r['seconds']:.1f} s), "
          f"CPU {r['cpu_seconds']:.1f} s, VmHWM {r['vmhwm_mib']:.0f} MiB, peak RssAnon {r['peak_rss_anon_mib']:.0f} MiB")
EOF
echo "raw results: $results"
