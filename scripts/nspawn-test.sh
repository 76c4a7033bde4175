#!/usr/bin/env bash
# nspawn-test.sh — install the .deb into a booted Debian under a real systemd
# and check the service end to end:
#   * dpkg -i enables the unit and does not start it;
#   * every program the unit runs is shipped by an essential package or one
#     the .deb depends on;
#   * systemctl start returns once the agent says READY=1 (Type=notify), and
#     /readyz on 127.0.0.1:9611 answers ready with the shipped configuration
#     (no Kafka is reachable: the agent is ready and spools);
#   * `bgpedge service status`, systemctl reload (SIGHUP re-reads the file),
#     a clean stop (Result=success, exit status 0, no panic, no error logged);
#   * a bad configuration fails the start with exit status 78, which the
#     unit's RestartPreventExitStatus keeps from a restart loop;
#   * after a reboot the enabled service runs and is ready;
#   * reinstalling the package restarts a running service; dpkg -r stops it;
#     a reinstall after dpkg -r enables the unit again unless it was disabled;
#   * `bgpedge service install|start|status|stop|uninstall` (the tarball
#     install path, kardianos/service) under the same systemd.
#
# The container is Debian bookworm (debootstrap --variant=minbase plus
# systemd), built once into $BGPEDGE_CACHE/nspawn-bookworm-<arch> from the
# Debian mirror this machine's apt uses, and rebuilt only when missing or
# when rootfs_key below changes. Each run boots a throw-away overlay of it
# with systemd-nspawn --boot --private-network (the container's loopback is
# its own: its 127.0.0.1:9092 is no Kafka, and nothing it does reaches the
# host's ports). Commands run inside through nsenter, which needs no systemd
# on the host. Everything started is stopped by PID on every exit path.
#
# Usage: scripts/nspawn-test.sh [bgpedge_VERSION_ARCH.deb]
#   Without an argument the .deb is built from a snapshot of the tree.
# Needs root, debootstrap, systemd-container (systemd-nspawn), util-linux
# (nsenter, flock) and overlayfs. Run by TestPackageUnderSystemd
# (agent/package_test.go) and usable by hand.
#
# Environment:
#   BGPEDGE_CACHE            cache directory (default $HOME/.cache/bgpedge)
#   BGPEDGE_DEBIAN_MIRROR    Debian mirror for debootstrap (default: the one
#                            in /etc/apt/sources.list*)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

suite=bookworm
# procps ships /bin/kill, which the unit's ExecReload runs; the package
# depends on it, and dpkg -i (offline here) needs it present.
include=systemd,systemd-sysv,dbus,curl,procps
# Change this to rebuild every cached root.
rootfs_key="1 $suite minbase $include"

fail() {
	echo "nspawn-test: FAIL: $*" >&2
	exit 1
}
step() { echo "nspawn-test: $*"; }
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

[[ $(id -u) == 0 ]] || fail "must run as root (it mounts an overlay and boots a container)"
for pair in debootstrap:debootstrap systemd-nspawn:systemd-container nsenter:util-linux \
	flock:util-linux dpkg-deb:dpkg mount:mount ps:procps; do
	command -v "${pair%%:*}" >/dev/null ||
		fail "${pair%%:*} not found: apt-get install ${pair#*:} (scripts/deps.sh does)"
done
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true

arch=$(dpkg --print-architecture)
cache=${BGPEDGE_CACHE:-$HOME/.cache/bgpedge}
rootfs=$cache/nspawn-$suite-$arch
mkdir -p "$cache"

# State for cleanup; set as things are started.
work=""
build=""
nspawn_pid=""
leader=""
debootstrap_pid=""
overlay=""

# kill_wait PID SECONDS: true once PID (-PGID: every process of the group)
# is gone, false at the deadline.
kill_wait() {
	local deadline=$(($(date +%s) + $2))
	while kill -0 -- "$1" 2>/dev/null; do
		(($(date +%s) < deadline)) || return 1
		sleep 0.1
	done
}

# unmount_under DIR: everything mounted at or below DIR, deepest first.
unmount_under() {
	local m
	findmnt -rn -o TARGET | awk -v d="$1" 'index($0, d "/") == 1 || $0 == d' | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

cleanup() {
	local rc=$?
	set +e
	if [[ $rc != 0 && -n $leader ]] && kill -0 "$leader" 2>/dev/null; then
		echo "nspawn-test: the container's journal (last 40 lines):" >&2
		nsenter --target "$leader" --all -- journalctl --no-pager -n 40 >&2
	fi
	if [[ $rc != 0 && -s $work/console.log ]]; then
		echo "nspawn-test: systemd-nspawn's output (last 20 lines):" >&2
		tail -n 20 "$work/console.log" >&2
	fi
	if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
		# SIGTERM makes systemd-nspawn power the container off.
		kill -TERM "$nspawn_pid" 2>/dev/null
		if ! kill_wait "$nspawn_pid" 20; then
			echo "nspawn-test: container did not power off, killing it" >&2
			[[ -n $leader ]] && kill -KILL "$leader" 2>/dev/null
			kill -KILL "$nspawn_pid" 2>/dev/null
			kill_wait "$nspawn_pid" 10
		fi
		wait "$nspawn_pid" 2>/dev/null
	fi
	if [[ -n $debootstrap_pid ]]; then
		kill -TERM -- "-$debootstrap_pid" 2>/dev/null
		kill_wait "-$debootstrap_pid" 10 || kill -KILL -- "-$debootstrap_pid" 2>/dev/null
		wait "$debootstrap_pid" 2>/dev/null
	fi
	if [[ -n $work ]]; then
		unmount_under "$work"
		rm -rf --one-file-system "$work"
	fi
	if [[ -n $build ]]; then
		unmount_under "$build"
		rm -rf --one-file-system "$build"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# debian_mirror prints the Debian mirror apt uses here: the URI of the first
# source for $suite, else of the first plain Debian archive source.
debian_mirror() {
	if [[ -n ${BGPEDGE_DEBIAN_MIRROR:-} ]]; then
		echo "$BGPEDGE_DEBIAN_MIRROR"
		return
	fi
	{
		local f
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[[ -r $f ]] || continue
			# deb [options] uri suite components
			sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2, $3 }'
		done
		for f in /etc/apt/sources.list.d/*.sources; do
			[[ -r $f ]] || continue
			# deb822 stanzas: Types, URIs and Suites fields.
			awk '
				function flush(  i, j, nu, ns, u, s) {
					if (types ~ /(^| )deb( |$)/) {
						nu = split(uris, u, " "); ns = split(suites, s, " ")
						for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
					}
					types = uris = suites = ""
				}
				/^[ \t]*#/ { next }
				/^[ \t]*$/ { flush(); next }
				tolower($1) == "types:"  { $1 = ""; types = $0 }
				tolower($1) == "uris:"   { $1 = ""; uris = $0 }
				tolower($1) == "suites:" { $1 = ""; suites = $0 }
				END { flush() }' "$f"
		done
	} | awk -v s="$suite" '
		$2 == s && !exact { exact = $1 }
		$1 ~ /\/debian\/?$/ && $2 ~ /^[a-z]+$/ && !plain { plain = $1 }
		END { if (exact) print exact; else if (plain) print plain }'
}

# The cached root: built once under a lock (the lock is held for the whole
# run, so a rebuild never replaces a root another run has mounted).
exec {lockfd}>"$rootfs.lock"
flock -w 1800 "$lockfd" || fail "another nspawn-test holds $rootfs.lock"
if [[ ! -f $rootfs/.bgpedge-rootfs-key || $(<"$rootfs/.bgpedge-rootfs-key") != "$rootfs_key" ]]; then
	mirror=$(debian_mirror)
	[[ -n $mirror ]] || fail "no Debian mirror in /etc/apt/sources.list*; set BGPEDGE_DEBIAN_MIRROR"
	step "building the $suite root (debootstrap from $mirror, once; cached in $rootfs)"
	t0=$(now)
	# Left by a run that was killed outright (the lock says none is running).
	for stale in "$cache"/.nspawn-build.*; do
		[[ -d $stale ]] || continue
		unmount_under "$stale"
		rm -rf --one-file-system "$stale"
	done
	build=$(mktemp -d "$cache/.nspawn-build.XXXXXX")
	# In its own process group, waited for in the background: a signal
	# then reaches the trap at once, and the trap ends the whole group.
	setsid --wait debootstrap --variant=minbase --arch="$arch" --include="$include" \
		"$suite" "$build/root" "$mirror" >"$build/debootstrap.log" 2>&1 {lockfd}>&- &
	debootstrap_pid=$!
	rc=0
	wait "$debootstrap_pid" || rc=$?
	debootstrap_pid=""
	if [[ $rc != 0 ]]; then
		tail -n 30 "$build/debootstrap.log" >&2
		fail "debootstrap failed ($rc)"
	fi
	# The downloaded archives and package lists are of no use offline.
	rm -rf "$build"/root/var/cache/apt/archives/*.deb "$build"/root/var/lib/apt/lists/*
	echo "$rootfs_key" >"$build/root/.bgpedge-rootfs-key"
	# Swap in whole: an interrupted build leaves no root (and the next run
	# builds again), never half of one.
	[[ -e $rootfs ]] && mv "$rootfs" "$build/old"
	mv "$build/root" "$rootfs"
	unmount_under "$build"
	rm -rf --one-file-system "$build"
	build=""
	step "root built in $(secs "$t0") s ($(du -sh "$rootfs" | cut -f1))"
else
	step "cached root $rootfs"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bgpedge-nspawn.XXXXXX")

if [[ $# -ge 1 ]]; then
	deb=$(realpath "$1")
else
	step "building the .deb"
	t0=$(now)
	export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}
	export COMMIT=${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo none)}
	# From a snapshot of the tree, so package.sh's scratch files stay out of
	# the checkout.
	mkdir -p "$work/src"
	tar --exclude=./.git --exclude=./dist --exclude=./.cache --exclude=./bin -cf - . | tar -xf - -C "$work/src"
	(cd "$work/src" && VERSION=1.0.0 DIST="$work/dist" scripts/package.sh "$arch" >/dev/null)
	deb=$(ls "$work"/dist/bgpedge_*_"$arch".deb)
	rm -rf "$work/src"
	step "built $(basename "$deb") in $(secs "$t0") s"
fi
[[ -f $deb ]] || fail "no .deb at $deb"

# A throw-away copy of the root: an overlay, or a copy where overlayfs
# cannot stack (a cache on overlayfs itself).
t0=$(now)
mkdir -p "$work/upper" "$work/ovl" "$work/root"
if mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovl" "$work/root" 2>/dev/null; then
	overlay=yes
else
	cp -a --reflink=auto "$rootfs/." "$work/root/"
	overlay=no
fi
# Not /tmp: the container mounts a tmpfs there.
cp "$deb" "$work/root/root/bgpedge.deb"
# debootstrap copied this machine's name; the agent id defaults to it.
echo bgpedge-nspawn >"$work/root/etc/hostname"
step "container root ready in $(secs "$t0") s (overlay: $overlay)"

# inside CMD...: run CMD inside the container (all its namespaces and root).
inside() { nsenter --target "$leader" --all -- "$@"; }
# poll SECONDS WHAT CMD...: run CMD until it succeeds, at most SECONDS.
poll() {
	local secs=$1 deadline=$(($(date +%s) + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		(($(date +%s) < deadline)) || fail "$what: not after $secs s"
		kill -0 "$nspawn_pid" 2>/dev/null || fail "$what: the container exited"
		sleep 0.05
	done
}
booted() {
	local s
	s=$(inside systemctl is-system-running 2>/dev/null) || true
	[[ $s == running || $s == degraded ]]
}

# boot: start the container and wait until its systemd finished starting up.
boot() {
	local t0 deadline p state
	step "booting"
	t0=$(now)
	# --register=no --keep-unit: no machined or scope unit, so no systemd
	# is needed on the host. --private-network: only a loopback of its own.
	systemd-nspawn --quiet --boot --directory="$work/root" --machine="bgpedge-test-$$" \
		--register=no --keep-unit --private-network \
		--console=pipe --link-journal=no --resolv-conf=off --timezone=off \
		</dev/null >>"$work/console.log" 2>&1 {lockfd}>&- &
	nspawn_pid=$!
	# The container's init is systemd-nspawn's child.
	leader=""
	deadline=$(($(date +%s) + 30))
	while [[ -z $leader ]]; do
		kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited during boot"
		(($(date +%s) < deadline)) || fail "no container init after 30 s"
		for p in $(ps -o pid= --ppid "$nspawn_pid"); do
			[[ $(cat "/proc/$p/comm" 2>/dev/null) == systemd ]] && leader=$p
		done
		[[ -n $leader ]] || sleep 0.05
	done
	poll 60 "container boot" booted
	state=$(inside systemctl is-system-running 2>/dev/null || true)
	step "booted in $(secs "$t0") s (system $state)"
	if [[ $state != running ]]; then
		inside systemctl --failed --no-pager --no-legend >&2 || true
	fi
}

# power_off: shut the container down and check systemd-nspawn's exit status.
power_off() {
	local t0 rc=0
	step "poweroff"
	t0=$(now)
	inside systemctl poweroff --no-block
	kill_wait "$nspawn_pid" 30 || fail "the container did not power off within 30 s"
	wait "$nspawn_pid" || rc=$?
	nspawn_pid=""
	leader=""
	[[ $rc == 0 ]] || fail "systemd-nspawn exited with $rc"
	step "powered off in $(secs "$t0") s"
}

boot

unit=bgpedge.service
prop() { inside systemctl show -p "$1" --value "$unit"; }
journal() { inside journalctl -u "$unit" --no-pager -o cat; }
ready() { inside curl -fsS --max-time 2 http://127.0.0.1:9611/readyz | grep -q '"ready":true'; }
# check_stopped WHAT: the last run ended on request, exit status 0.
check_stopped() {
	local got
	got="$(prop ActiveState) $(prop Result) $(prop ExecMainCode) $(prop ExecMainStatus) $(prop NRestarts)"
	# ExecMainCode 1 is CLD_EXITED: the process exited by itself (on SIGTERM).
	[[ $got == "inactive success 1 0 0" ]] ||
		fail "$1: ActiveState Result ExecMainCode ExecMainStatus NRestarts = $got, want inactive success 1 0 0"
}
check_journal() {
	local j
	j=$(journal)
	if grep -Eq 'panic:|fatal error:|goroutine [0-9]+ \[' <<<"$j"; then
		echo "$j" >&2
		fail "$1: the journal shows a panic"
	fi
	if grep -q '"level":"ERROR"' <<<"$j"; then
		grep '"level":"ERROR"' <<<"$j" >&2
		fail "$1: the agent logged errors"
	fi
}

step "dpkg -i"
inside dpkg -i /root/bgpedge.deb >"$work/dpkg.log" 2>&1 || {
	cat "$work/dpkg.log" >&2
	fail "dpkg -i"
}
[[ $(inside systemctl is-enabled "$unit" 2>&1) == enabled ]] || fail "the package did not enable $unit"
[[ $(inside systemctl is-active "$unit" 2>&1) == inactive ]] || fail "a fresh install started $unit (it must wait for the configuration)"

# The programs the unit runs must be there on any system the package installs on.
depends=$(dpkg-deb -f "$deb" Depends | tr ',|' '\n' | sed 's/(.*)//; s/[[:space:]]//g' | grep -v '^$')
for exe in $(inside systemctl show -p ExecStartPre -p ExecStart -p ExecReload -p ExecStop -p ExecStopPost "$unit" |
	sed -n 's/.*path=\([^ ;]*\).*/\1/p' | sort -u); do
	pkg=$(inside dpkg -S "$exe" 2>/dev/null | head -n 1 | cut -d: -f1) || true
	[[ -n $pkg ]] || fail "the unit runs $exe, which no installed package ships"
	[[ $pkg == bgpedge ]] && continue
	# shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
	[[ $(inside dpkg-query -W -f='${Essential}' "$pkg") == yes ]] && continue
	grep -qx "$pkg" <<<"$depends" || fail "the unit runs $exe from $pkg, which the package does not depend on"
done

step "systemctl start"
t0=$(now)
inside systemctl start "$unit" || {
	journal >&2
	fail "systemctl start"
}
step "active in $(secs "$t0") s (Type=notify: READY=1 received)"
[[ $(inside systemctl is-active "$unit") == active ]] || fail "$unit is not active after start"
poll 30 "/readyz ready" ready
readyz=$(inside curl -fsS http://127.0.0.1:9611/readyz)
step "ready in $(secs "$t0") s: $readyz"
grep -q '"agent_id":"bgpedge-nspawn"' <<<"$readyz" || fail "agent id is not the host name"
[[ $(inside /usr/bin/bgpedge service status) == "bgpedge service: running (linux-systemd)" ]] ||
	fail "bgpedge service status: $(inside /usr/bin/bgpedge service status 2>&1)"

step "systemctl reload"
pid=$(prop MainPID)
inside systemctl reload "$unit" || {
	journal | tail -n 20 >&2
	fail "systemctl reload"
}
reloaded() { journal | grep -q '"msg":"reload: configuration applied"'; }
poll 30 "reload applied" reloaded
[[ $(prop MainPID) == "$pid" && $(inside systemctl is-active "$unit") == active ]] ||
	fail "reload restarted the service"
poll 30 "/readyz ready after reload" ready

step "systemctl stop"
t0=$(now)
inside systemctl stop "$unit"
step "stopped in $(secs "$t0") s"
check_stopped "systemctl stop"
journal | grep -q '"msg":"agent stopped"' || fail "no 'agent stopped' in the journal"
check_journal "start, reload, stop"
[[ $(inside /usr/bin/bgpedge service status) == "bgpedge service: stopped (linux-systemd)" ]] ||
	fail "bgpedge service status after stop: $(inside /usr/bin/bgpedge service status 2>&1)"

step "a bad configuration fails the start, exit status 78, and systemd does not restart it"
inside cp /etc/bgpedge/bgpedge.yaml /root/bgpedge.yaml.good
inside sh -c 'echo "bogus_key: 1" >>/etc/bgpedge/bgpedge.yaml'
inside systemctl start "$unit" >/dev/null 2>&1 && fail "systemctl start succeeded with an unknown key in the configuration"
got="$(prop ActiveState) $(prop SubState) $(prop NRestarts) $(prop ExecMainStatus)"
[[ $got == "failed failed 0 78" ]] || fail "after a start with a bad configuration: ActiveState SubState NRestarts ExecMainStatus = $got, want failed failed 0 78 (no restart loop)"
journal | grep -q 'bogus_key: unknown key' || fail "the journal does not name the bad key"
inside cp /root/bgpedge.yaml.good /etc/bgpedge/bgpedge.yaml
inside systemctl reset-failed "$unit"
# The same for a file the service user cannot read (the package installs it
# root:bgpedge 0640).
inside chmod 0600 /etc/bgpedge/bgpedge.yaml
inside systemctl start "$unit" >/dev/null 2>&1 && fail "systemctl start succeeded with an unreadable configuration"
got="$(prop ActiveState) $(prop SubState) $(prop NRestarts) $(prop ExecMainStatus)"
[[ $got == "failed failed 0 78" ]] || fail "after a start with an unreadable configuration: ActiveState SubState NRestarts ExecMainStatus = $got, want failed failed 0 78"
journal | grep -q 'permission denied' || fail "the journal does not say the configuration is unreadable"
inside chmod 0640 /etc/bgpedge/bgpedge.yaml
inside systemctl reset-failed "$unit"

# The unit is enabled: a boot starts it.
power_off
boot
[[ $(inside systemctl is-active "$unit") == active ]] || fail "the enabled $unit did not start at boot"
poll 30 "/readyz ready after boot" ready
step "started at boot, ready"

step "reinstall restarts a running service"
pid=$(prop MainPID)
inside dpkg -i /root/bgpedge.deb >"$work/dpkg.log" 2>&1 || {
	cat "$work/dpkg.log" >&2
	fail "dpkg -i over an installed package"
}
[[ $(inside systemctl is-active "$unit") == active && $(prop MainPID) != "$pid" ]] ||
	fail "reinstall did not restart $unit (MainPID $pid -> $(prop MainPID))"
poll 30 "/readyz ready after reinstall" ready

step "dpkg -r stops the running service"
inside dpkg -r bgpedge >"$work/dpkg.log" 2>&1 || {
	cat "$work/dpkg.log" >&2
	fail "dpkg -r"
}
[[ $(inside systemctl is-active "$unit" 2>&1) != active ]] || fail "$unit still active after dpkg -r"
[[ $(prop LoadState) == not-found ]] || fail "the unit is still loaded after dpkg -r"
inside pgrep -x bgpedge >/dev/null && fail "a bgpedge process survived dpkg -r"
check_journal "reinstall and remove"

step "dpkg -i after dpkg -r enables the unit as before; one the administrator disabled stays disabled"
dpkg_in() {
	inside dpkg "$@" >"$work/dpkg.log" 2>&1 || {
		cat "$work/dpkg.log" >&2
		fail "dpkg $*"
	}
}
dpkg_in -i /root/bgpedge.deb
[[ $(inside systemctl is-enabled "$unit" 2>&1) == enabled ]] || fail "reinstall after dpkg -r left $unit $(inside systemctl is-enabled "$unit" 2>&1)"
[[ $(inside systemctl is-active "$unit" 2>&1) != active ]] || fail "reinstall after dpkg -r started $unit"
inside systemctl disable "$unit" >/dev/null 2>&1 || fail "systemctl disable"
dpkg_in -r bgpedge
dpkg_in -i /root/bgpedge.deb
[[ $(inside systemctl is-enabled "$unit" 2>&1) == disabled ]] || fail "reinstall enabled $unit, which was disabled before dpkg -r"
dpkg_in -r bgpedge

# The tarball path: the binary alone, `bgpedge service install` writes the
# unit. dpkg -r kept the user, the configuration and /var/lib/bgpedge.
step "bgpedge service install/start/status/stop/uninstall"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/bgpedge >"$work/root/root/bgpedge"
inside install -m 0755 /root/bgpedge /usr/bin/bgpedge
svc() { inside /usr/bin/bgpedge service "$@"; }
[[ $(svc status) == "bgpedge service: not installed (linux-systemd)" ]] || fail "service status before install: $(svc status 2>&1)"
svc install >/dev/null || fail "bgpedge service install"
[[ $(inside cat /etc/systemd/system/bgpedge.service) == "$(svc unit)" ]] ||
	fail "service install wrote a unit other than the hardened one"
[[ $(inside systemctl is-enabled "$unit") == enabled ]] || fail "service install did not enable the unit"
t0=$(now)
svc start >/dev/null || fail "bgpedge service start"
poll 30 "/readyz ready after service start" ready
step "ready in $(secs "$t0") s after bgpedge service start"
[[ $(svc status) == "bgpedge service: running (linux-systemd)" ]] || fail "service status: $(svc status 2>&1)"
svc stop >/dev/null || fail "bgpedge service stop"
check_stopped "bgpedge service stop"
[[ $(svc status) == "bgpedge service: stopped (linux-systemd)" ]] || fail "service status after stop: $(svc status 2>&1)"
svc uninstall >/dev/null || fail "bgpedge service uninstall"
inside test -e /etc/systemd/system/bgpedge.service && fail "service uninstall left the unit file"
[[ $(svc status) == "bgpedge service: not installed (linux-systemd)" ]] || fail "service status after uninstall: $(svc status 2>&1)"
check_journal "bgpedge service"

power_off

step "OK"
