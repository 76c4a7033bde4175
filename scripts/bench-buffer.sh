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
	for (i = 3; i < NF; i++) if ($(i+1) ~ /^(rec\/s|plain-rec\/s|ratio|rec\/commit|grouped-rec\/s|grouped-ratio|bolt-rec\/s|bolt-ratio|spool-bolt-ratio|spool-MiB|commit-µs|sync-µs|plain-write-µs|plain-sync-µs)$/) print name, $(i+1), $i
}')

# "size appenders drain" for each record size and appender count, and each
# drain given
cases() {
	for c in "200 1" "200 64" "1024 1" "1024 64"; do
		for d in "$@"; do echo "$c $d"; done
	done
}

median() { # name unit
	echo "$pairs" | awk -v n="$1" -v u="$2" '$1 == n && $2 == u { print $3 }' | sort -g |
		awk '{ v[NR] = $1 } END { if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2] + v[NR/2+1]) / 2 }'
}

echo
echo "drain: none = nothing acknowledged (the spool fills, every commit appends to the file);"
echo "ack = each Append acknowledged when it returns; reader = a reader reads and acknowledges"
echo "everything, as the forwarder does (both reuse the pages of acknowledged blocks)."
echo
echo "| record | appenders × records per call | drain | spool rec/s | records per commit | spool MiB at end | plain file rec/s (fdatasync every) | spool / plain | plain file, same appenders group-committed, rec/s | spool / that |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for c in "200 1 1000 1000" "200 64 16 1024" "1024 1 1000 1000" "1024 64 16 1024"; do
	read -r size app per batch <<<"$c"
	for drain in none ack reader; do
		k="Append/size=$size/appenders=$app/drain=$drain"
		awk -v s="$size" -v a="$app" -v p="$per" -v b="$batch" -v d="$drain" -v sp="$(median "$k" rec/s)" \
			-v pc="$(median "$k" rec/commit)" -v mib="$(median "$k" spool-MiB)" -v pl="$(median "$k" plain-rec/s)" \
			-v r="$(median "$k" ratio)" -v g="$(median "$k" grouped-rec/s)" -v gr="$(median "$k" grouped-ratio)" 'BEGIN {
			gs = "same as plain"; grs = ""
			if (g != "NaN") { gs = sprintf("%.0f", g); grs = sprintf("%.2f", gr) }
			printf "| %d B | %d × %d | %s | %.0f | %.0f | %.1f | %.0f (%d records) | %.2f | %s | %s |\n", s, a, p, d, sp, pc, mib, pl, b, r, gs, grs }'
	done
done
echo
echo "Where the time goes (medians, µs): one spool commit (the bbolt transaction with its writes,"
echo "then the fdatasync) against one plain-file batch (write, then fdatasync). The rest of an"
echo "Append is encoding the records and handing them to the writer."
echo
echo "| record | appenders | drain | spool commit µs | of which fdatasync µs | plain write µs | plain fdatasync µs |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: |"
cases none ack reader | while read -r size app drain; do
	k="Append/size=$size/appenders=$app/drain=$drain"
	awk -v s="$size" -v a="$app" -v d="$drain" -v c="$(median "$k" commit-µs)" -v y="$(median "$k" sync-µs)" \
		-v w="$(median "$k" plain-write-µs)" -v p="$(median "$k" plain-sync-µs)" 'BEGIN {
		printf "| %d B | %d | %s | %.0f | %.0f | %.0f | %.0f |\n", s, a, d, c, y, w, p }'
done
echo
echo "The floor (medians): bbolt alone, with the spool's options and block layout, storing the"
echo "plain file's pre-encoded batch, one transaction and one fdatasync per batch; with 64 appenders"
echo "through the same group commit as the grouped plain file; for ack, each transaction also deletes"
echo "the previous block, as the spool reclaims acknowledged blocks. It pays no encoding, no hand-off"
echo "and no spool bookkeeping: a spool that stores its blocks this way in bbolt does not get above it."
echo
echo "| record | appenders | drain | plain file rec/s | bbolt alone rec/s | bbolt alone / plain | spool rec/s | spool / plain | spool / bbolt alone |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
cases none ack | while read -r size app drain; do
	k="Append/size=$size/appenders=$app/drain=$drain"
	pl=$(median "$k" plain-rec/s) r=$(median "$k" ratio)
	if [ "$app" != 1 ]; then pl=$(median "$k" grouped-rec/s) r=$(median "$k" grouped-ratio); fi
	awk -v s="$size" -v a="$app" -v d="$drain" -v pl="$pl" -v fl="$(median "$k" bolt-rec/s)" -v fr="$(median "$k" bolt-ratio)" \
		-v sp="$(median "$k" rec/s)" -v r="$r" -v sf="$(median "$k" spool-bolt-ratio)" 'BEGIN {
		printf "| %d B | %d%s | %s | %.0f | %.0f | %.2f | %.0f | %.2f | %.2f |\n", s, a, (a > 1 ? " (grouped)" : ""), d, pl, fl, fr, sp, r, sf }'
done
echo
echo "| read + AckThrough, 1000 per Read | rec/s |"
echo "| --- | ---: |"
for size in 200 1024; do
	awk -v s="$size" -v r="$(median "ReadAck/size=$size" rec/s)" 'BEGIN { printf "| %d B | %.0f |\n", s, r }'
done
