#!/usr/bin/env bash
# Spool benchmark (docs/BENCHMARKS.md, section "Spool"): append throughput of
# the spool against a plain append-and-fdatasync file at the same batch size,
# measured in the same run, and read+ack throughput. Prints the raw `go test`
# output, then a markdown table of medians over COUNT runs.
#
#   scripts/bench-buffer.sh            # N=200000 records per benchmark, COUNT=3
#   N=500000 COUNT=5 scripts/bench-buffer.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
COUNT=${COUNT:-3}
cmd=(go test -run '^$' -bench 'BenchmarkAppend|BenchmarkPlainFile|BenchmarkReadAck' -benchtime "${N}x" -count "$COUNT" ./buffer/)
echo "\$ ${cmd[*]}"
raw=$("${cmd[@]}")
echo "$raw"

# name value pairs: "Append/size=200/appenders=1 rec/s 123456", "... rec/commit 1000"
pairs=$(echo "$raw" | awk '/^Benchmark/ {
	name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
	for (i = 2; i < NF; i++) if ($(i+1) == "rec/s" || $(i+1) == "rec/commit") print name, $(i+1), $i
}')

median() { # name unit
	echo "$pairs" | awk -v n="$1" -v u="$2" '$1 == n && $2 == u { print $3 }' | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2] + v[NR/2+1]) / 2 }'
}

echo
echo "| record | appenders × records per call | spool rec/s | records per commit | plain file rec/s (fdatasync per batch of) | spool / plain |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for c in "200 1 1000 1000" "200 64 16 1024" "1024 1 1000 1000" "1024 64 16 1024"; do
	read -r size app per batch <<<"$c"
	k="size=$size/appenders=$app"
	sp=$(median "Append/$k" rec/s)
	pc=$(median "Append/$k" rec/commit)
	pl=$(median "PlainFile/$k" rec/s)
	awk -v s="$size" -v a="$app" -v p="$per" -v b="$batch" -v sp="$sp" -v pc="$pc" -v pl="$pl" 'BEGIN {
		printf "| %d B | %d × %d | %.0f | %.0f | %.0f (%d) | %.2f |\n", s, a, p, sp, pc, pl, b, sp / pl }'
done
echo
echo "| read + AckThrough, 1000 per Read | rec/s |"
echo "| --- | ---: |"
for size in 200 1024; do
	awk -v s="$size" -v r="$(median "ReadAck/size=$size" rec/s)" 'BEGIN { printf "| %d B | %.0f |\n", s, r }'
done
