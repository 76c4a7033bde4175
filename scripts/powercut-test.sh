#!/usr/bin/env bash
# powercut-test.sh — real power cuts under a real kernel (issue 15): the
# spool and the whole agent run in a qemu machine booted from Debian's own
# kernel, and qemu is SIGKILLed at random moments, which drops the guest's
# page cache and its writes in flight as a power cut does. See
# internal/powercut (the machine), buffer/powercut_test.go and
# forwarder/powercut_test.go (the oracles), and docs/BENCHMARKS.md ("Power
# cuts") for a full run.
#
#   1. buffer TestPowerCut        CYCLES cuts of the spool's crash-oracle
#                                 appender: 0 acknowledged records lost, 0
#                                 seqs reused, every reboot opens the spool
#   2. buffer TestPowerCutNoSync  the negative control: the same with a spool
#                                 that skips fdatasync must be caught losing
#                                 acknowledged records (at most NOSYNC_CYCLES cuts)
#   3. forwarder TestPowerCutAgent  AGENT_CYCLES cuts of `bgpedge run` while
#                                 four BMP sessions stream into it; the image
#                                 is then recovered on the host and forwarded
#                                 to Kafka by `bgpedge run`: every record
#                                 byte-identical, loss per cut reported
#
# Needs qemu-system-x86, linux-image-amd64 and e2fsprogs (scripts/deps.sh
# installs them), and a Kafka broker for step 3 (BGPEDGE_TEST_KAFKA, else the
# one of scripts/kafka.sh, started and stopped again when not running).
# Kernel copies and initramfs images are cached in .cache/powercut/.
#
# Environment:
#   CYCLES                power cuts of the spool [20]; 0 skips steps 1 and 2
#   AGENT_CYCLES          power cuts of the agent [10]; 0 skips step 3
#   NOSYNC_CYCLES         most power cuts the negative control may take [5]
#   POWERCUT_COUNTS       also write "passed failed skipped" to this file (test.sh)
#   BGPEDGE_SKIP_DEPS=1   do not run scripts/deps.sh
#   BGPEDGE_POWERCUT_KEEP keep each test's disk image, consoles and reports
#                         under this directory
#   BGPEDGE_POWERCUT_RATE messages per second of the four sessions [2000]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cycles=${CYCLES:-20}
agent_cycles=${AGENT_CYCLES:-10}
nosync_cycles=${NOSYNC_CYCLES:-5}
t_start=$SECONDS

if [[ ${BGPEDGE_SKIP_DEPS:-} != 1 ]]; then
	"$root/scripts/deps.sh"
fi
if ((agent_cycles > 0)) && [[ -z ${BGPEDGE_TEST_KAFKA:-} ]]; then
	# shellcheck source=scripts/lib-kafka.sh
	source "$root/scripts/lib-kafka.sh"
fi

export BGPEDGE_POWERCUT=1
export BGPEDGE_POWERCUT_CYCLES=$cycles
export BGPEDGE_POWERCUT_AGENT_CYCLES=$agent_cycles
export BGPEDGE_POWERCUT_NOSYNC_CYCLES=$nosync_cycles
export CI=${CI:-true} # a missing qemu or kernel fails instead of skipping

log=$(mktemp "${TMPDIR:-/tmp}/bgpedge-powercut.XXXXXX")
trap 'rm -f "$log"; if declare -F kafka_cleanup >/dev/null; then kafka_cleanup; fi' EXIT
# The spool's tests and the agent's run side by side (go test runs the two
# packages in parallel): each machine is one emulated CPU, one host core.
pkgs=()
((cycles > 0)) && pkgs+=(./buffer/)
((agent_cycles > 0)) && pkgs+=(./forwarder/)
status=0
if ((${#pkgs[@]} > 0)); then
	echo "\$ go test -count=1 -v -timeout 90m -run '^TestPowerCut(NoSync|Agent)?\$' ${pkgs[*]}"
	set +e
	go test -count=1 -v -timeout 90m -run '^TestPowerCut(NoSync|Agent)?$' "${pkgs[@]}" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	set -e
	((rc == 0)) || status=1
fi

passed=$(grep -cE '^--- PASS: TestPowerCut' "$log" || true)
failed=$(grep -cE '^--- FAIL: TestPowerCut' "$log" || true)
skipped=$(grep -cE '^--- SKIP: TestPowerCut' "$log" || true)
if ((status != 0 && failed == 0)); then
	failed=1 # go test failed without a test failing (build error, timeout)
fi
if [[ -n ${POWERCUT_COUNTS:-} ]]; then
	echo "$passed $failed $skipped" >"$POWERCUT_COUNTS"
fi
echo
echo "powercut-test.sh (CYCLES=$cycles AGENT_CYCLES=$agent_cycles) finished in $((SECONDS - t_start))s: $passed passed, $failed failed, $skipped skipped"
exit "$status"
