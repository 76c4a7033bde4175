#!/usr/bin/env bash
# Spool benchmark (docs/BENCHMARKS.md, section "Spool"): append throughput of
# the spool against a plain append-and-fdatasync file at the same batch size,
# measured in alternating rounds of the same run, and read+ack throughput.
# Prints the raw `go test` output, then a markdown table of medians over
# COUNT runs.
#
#   scripts/bench-buffer.sh            # N=300000 records per benchmark, COUNT=3
#   N=1000000 COUNT=5 scripts/bench-buffer.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300000}
COUNT=${COUNT:-3}
cmd=(go test -run '^$' -bench 'BenchmarkAppend|BenchmarkReadAck' -benchtime "${N}x" -count "$COUNT" ./buffer/)
echo "\$ ${cmd[*]}"
raw=$("${cmd[@]}")
echo "$raw"

# "name unit value" for every custom metric of every result line
pairs=$(echo "$raw" | awk '/^Benchmark/ {
	name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i++) if ($(i+1) ~ /^(rec\/s|plain-rec\/s|ratio|rec\/commit)$/) print name, $(i+1), $i
}')

median() { # name unit
	echo "$pairs" | awk -v n="$1" -v u="$2" '$1 == n && $2 == u { print $3 }' | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2] + v[NR/2+1]) / 2 }'
}

echo
echo "| record | appenders × records per call | spool rec/s | records per commit | plain file rec/s (fdatasync every) | spool / plain |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for c in "200 1 1000 1000" "200 64 16 1024" "1024 1 1000 1000" "1024 64 16 1024"; do
	read -r size app per batch <<<"$c"
	k="Append/size=$size/appenders=$app"
	awk -v s="$size" -v a="$app" -v p="$per" -v b="$batch" -v sp="$(median "$k" rec/s)" -v pc="$(median "$k" rec/commit)" \
		-v pl="$(median "$k" plain-rec/s)" -v r="$(median "$k" ratio)" 'BEGIN {
		printf "| %d B | %d × %d | %.0f | %.0f | %.0f (%d records) | %.2f |\n", s, a, p, sp, pc, pl, b, r }'
done
echo
echo "| read + AckThrough, 1000 per Read | rec/s |"
echo "| --- | ---: |"
for size in 200 1024; do
	awk -v s="$size" -v r="$(median "ReadAck/size=$size" rec/s)" 'BEGIN { printf "| %d B | %.0f |\n", s, r }'
done
