#!/usr/bin/env bash
# test.sh — the whole test run (`make test`, and CI through .ci/run):
#   1. scripts/deps.sh (Debian packages, JDK/Maven, Kafka jars, Go modules)
#   2. a real Kafka broker from scripts/kafka.sh, stopped on exit whatever happens
#   3. gofmt, go vet and staticcheck (pinned in tools/go.mod)
#   4. go test -race over every package, summarised (one line per test,
#      full output of failures)
#   5. the race-excluded and full-size tests once more without -race
#   6. every FuzzXxx target in the repository for FUZZTIME (default 10s),
#      through scripts/fuzz.sh
#   7. a short run of the power-cut tests under qemu (scripts/powercut-test.sh:
#      3 power cuts of the spool, its negative control, 2 of the agent)
# It ends with a plain "N passed, N failed, N skipped" line and exits non-zero
# when any step failed.
#
# Environment:
#   FUZZTIME               time per fuzz target [10s]; 0 skips fuzzing
#   POWERCUT_CYCLES        power cuts of the spool in step 7 [3]
#   POWERCUT_AGENT_CYCLES  power cuts of the agent in step 7 [2]; both 0 skip it,
#                          as BGPEDGE_TEST_RUN and BGPEDGE_TEST_PKGS do
#   BGPEDGE_TEST_TIMEOUT   go test -timeout [30m]
#   BGPEDGE_TEST_PKGS      packages to test [./...]
#   BGPEDGE_TEST_RUN       go test -run pattern [all tests]
#   BGPEDGE_SKIP_DEPS=1    do not run scripts/deps.sh
#   BGPEDGE_KAFKA_PORT     broker port [9092] (see scripts/kafka.sh for the rest)
#   BGPEDGE_TEST_KAFKA     when already set, use that broker and start none
#   BGPEDGE_EXABGP5        exaBGP 5 for the lab tests [.cache/exabgp5/bin/exabgp, from deps.sh]
#   CI                     set to true unless already set: this run installs
#                          every component, so a test that still finds one
#                          missing fails (testenv.Missing) instead of skipping
set -euo pipefail
export CI=${CI:-true}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

fuzztime=${FUZZTIME:-10s}
timeout=${BGPEDGE_TEST_TIMEOUT:-30m}
read -r -a pkgs <<<"${BGPEDGE_TEST_PKGS:-./...}"
t_start=$SECONDS
status=0

step() { printf '\n==> %s\n' "$*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/bgpedge-test.XXXXXX")
started_kafka=false
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$?
	if [[ $started_kafka == true ]]; then
		"$root/scripts/kafka.sh" stop || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ ${BGPEDGE_SKIP_DEPS:-} != 1 ]]; then
	step "dependencies (scripts/deps.sh)"
	t0=$SECONDS
	"$root/scripts/deps.sh"
	echo "dependencies ready in $((SECONDS - t0))s"
fi

export BGPEDGE_KAFKA_SH=$root/scripts/kafka.sh
# exaBGP 5, installed by scripts/deps.sh beside Debian's 4.2.
export BGPEDGE_EXABGP5=${BGPEDGE_EXABGP5:-$root/.cache/exabgp5/bin/exabgp}
if [[ -z ${BGPEDGE_TEST_KAFKA:-} ]]; then
	step "Kafka broker (scripts/kafka.sh start)"
	export BGPEDGE_KAFKA_HOST=${BGPEDGE_KAFKA_HOST:-127.0.0.1}
	export BGPEDGE_KAFKA_PORT=${BGPEDGE_KAFKA_PORT:-9092}
	if "$root/scripts/kafka.sh" status >/dev/null; then
		echo "reusing the broker already running on $BGPEDGE_KAFKA_HOST:$BGPEDGE_KAFKA_PORT"
	else
		started_kafka=true
		"$root/scripts/kafka.sh" start
	fi
	export BGPEDGE_TEST_KAFKA=$BGPEDGE_KAFKA_HOST:$BGPEDGE_KAFKA_PORT
fi
echo "BGPEDGE_TEST_KAFKA=$BGPEDGE_TEST_KAFKA"

step "lint: gofmt, go vet, staticcheck"
unformatted=$(gofmt -l $(git ls-files --cached --others --exclude-standard '*.go'))
if [[ -n $unformatted ]]; then
	echo "gofmt: FAILED, needs formatting:"
	echo "$unformatted"
	status=1
fi
if ! go vet "${pkgs[@]}"; then
	echo "go vet: FAILED"
	status=1
fi
if ! go tool -modfile=tools/go.mod staticcheck "${pkgs[@]}"; then
	echo "staticcheck: FAILED"
	status=1
fi

step "go test -race (timeout $timeout)"
go build -o "$work/testsummary" ./scripts/testsummary
run=()
[[ -n ${BGPEDGE_TEST_RUN:-} ]] && run=(-run "$BGPEDGE_TEST_RUN")
t0=$SECONDS
set +e
# The power-cut tests boot virtual machines for minutes: step 7 runs them.
go test -race -count=1 -timeout "$timeout" -json "${run[@]}" -skip '^TestPowerCut(NoSync|Agent)?$' "${pkgs[@]}" 2>&1 |
	"$work/testsummary" -counts "$work/counts"
test_rc=("${PIPESTATUS[@]}")
set -e
echo "go test took $((SECONDS - t0))s"
if [[ ${test_rc[0]} != 0 || ${test_rc[1]} != 0 ]]; then
	status=1
fi
read -r passed failed skipped <"$work/counts" || {
	passed=0 failed=1 skipped=0
}

# Some tests shrink their input under the race detector (the 300,006-message
# capture) or cannot run with it (GoBGP v4.8.0 races inside its own BMP code):
# run those once more without it, at full size.
if [[ -z ${BGPEDGE_TEST_RUN:-}${BGPEDGE_TEST_PKGS:-} ]]; then
	step "go test without -race: full-size and race-excluded tests"
	norace_run='^(TestLiveGoBGP|TestRIBLiveGoBGP|TestCaptureOracle|TestDecodeRawCaptures|TestEndToEndCapturesToKafka|TestRunCapturesAgainstTshark|TestBadInputMemoryBounded|TestFastPathMatchesLibrary)$'
	t0=$SECONDS
	set +e
	go test -count=1 -timeout "$timeout" -json -run "$norace_run" ./bmp/ ./forwarder/ ./rib/ 2>&1 |
		"$work/testsummary" -counts "$work/counts-norace"
	test_rc=("${PIPESTATUS[@]}")
	set -e
	echo "go test without -race took $((SECONDS - t0))s"
	if [[ ${test_rc[0]} != 0 || ${test_rc[1]} != 0 ]]; then
		status=1
	fi
	if read -r p f s <"$work/counts-norace"; then
		passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
	else
		failed=$((failed + 1))
	fi
fi

fuzz_passed=0 fuzz_failed=0
if [[ $fuzztime != 0 && $fuzztime != 0s ]]; then
	step "fuzzing, $fuzztime per target (scripts/fuzz.sh)"
	if ! FUZZTIME=$fuzztime FUZZ_COUNTS=$work/fuzzcounts "$root/scripts/fuzz.sh"; then
		status=1
	fi
	read -r fuzz_passed fuzz_failed <"$work/fuzzcounts" || fuzz_failed=1
fi

pc_passed=0 pc_failed=0 pc_skipped=0
pc_cycles=${POWERCUT_CYCLES:-3} pc_agent=${POWERCUT_AGENT_CYCLES:-2}
if [[ -z ${BGPEDGE_TEST_RUN:-}${BGPEDGE_TEST_PKGS:-} ]] && [[ $pc_cycles != 0 || $pc_agent != 0 ]]; then
	step "power cuts under qemu: $pc_cycles of the spool, $pc_agent of the agent (scripts/powercut-test.sh)"
	if ! CYCLES=$pc_cycles AGENT_CYCLES=$pc_agent BGPEDGE_SKIP_DEPS=1 POWERCUT_COUNTS=$work/pccounts \
		"$root/scripts/powercut-test.sh"; then
		status=1
	fi
	read -r pc_passed pc_failed pc_skipped <"$work/pccounts" || pc_failed=1
fi

# Stop the broker now rather than in the exit trap, so the counts below are
# the last lines of the log.
if [[ $started_kafka == true ]]; then
	"$root/scripts/kafka.sh" stop 2>&1 || true
	started_kafka=false
fi

if [[ $failed != 0 ]]; then
	status=1
fi
echo
echo "test.sh finished in $((SECONDS - t_start))s (tests, fuzz targets and power-cut tests counted together)"
echo "$((passed + fuzz_passed + pc_passed)) passed, $((failed + fuzz_failed + pc_failed)) failed, $((skipped + pc_skipped)) skipped"
exit "$status"
