#!/usr/bin/env bash
# package-test.sh — build the packages and check them for real:
#   * both builds of one commit are byte-identical (reproducible);
#   * the .deb installs on this machine with dpkg: system user, owners and
#     modes, a working binary and config, the conffile kept on upgrade, then a
#     clean remove (config kept) and purge (config and spool gone);
#   * the .rpm passes rpm -qip/-qlp/--scripts and installs into a scratch root;
#   * systemd-analyze verify passes and the security exposure is <= 2.0.
# It installs a real package on the host (needs root) and purges it on exit.
# Run by TestPackages (agent/package_test.go) and usable by hand.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

fail() {
	echo "package-test: FAIL: $*" >&2
	exit 1
}
step() { echo "package-test: $*"; }

[[ $(id -u) == 0 ]] || fail "must run as root (it installs the .deb)"
for c in dpkg dpkg-deb rpm systemd-analyze; do
	command -v "$c" >/dev/null || fail "$c not found (scripts/deps.sh installs it)"
done
installed() { [[ $(dpkg-query -W -f='${Status}' bgpedge 2>/dev/null || true) == *" installed" ]]; }
if installed; then
	fail "a bgpedge package is already installed on this machine; refusing to touch it"
fi

work=$(mktemp -d)
user_existed=0
getent passwd bgpedge >/dev/null && user_existed=1
cleanup() {
	if [[ -n $(dpkg-query -W -f='${Status}' bgpedge 2>/dev/null || true) ]]; then
		dpkg --purge bgpedge >/dev/null 2>&1 || true
	fi
	if [[ $user_existed == 0 ]]; then
		userdel bgpedge >/dev/null 2>&1 || true
		groupdel bgpedge >/dev/null 2>&1 || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export COMMIT=${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo none)}
export VERSION=1.0.0
# Build from a snapshot of the tree, so that both builds see the same sources
# even while someone edits the checkout.
mkdir -p "$work/src"
tar --exclude=./.git --exclude=./dist --exclude=./.cache --exclude=./bin -cf - . | tar -xf - -C "$work/src"
cd "$work/src"
step "building packages twice (reproducibility)"
DIST="$work/a" scripts/package.sh amd64 arm64 >/dev/null
DIST="$work/b" scripts/package.sh amd64 arm64 >/dev/null
for f in "$work"/a/*.deb "$work"/a/*.rpm; do
	b="$work/b/$(basename "$f")"
	cmp -s "$f" "$b" || fail "$(basename "$f") differs between two builds of one commit"
done
n=$(ls "$work"/a/*.deb "$work"/a/*.rpm | wc -l)
[[ $n == 4 ]] || fail "expected 4 packages (deb, rpm x amd64, arm64), got $n"
step "4 packages, byte-identical across builds"

arch=$(dpkg --print-architecture)
deb=$(ls "$work"/a/bgpedge_*_"$arch".deb)

step "deb metadata and contents"
grep -q 'Package: bgpedge' <<<"$(dpkg-deb --info "$deb")" || fail "deb control"
listing=$(dpkg-deb --contents "$deb")
for want in './usr/bin/bgpedge' './etc/bgpedge/bgpedge.yaml' './etc/bgpedge/exabgp.conf' \
	'./usr/lib/systemd/system/bgpedge.service' './var/lib/bgpedge/'; do
	grep -q " $want\$" <<<"$listing" || fail "deb lacks $want"
done
grep -qx /etc/bgpedge/bgpedge.yaml <<<"$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" ||
	fail "bgpedge.yaml is not a conffile"

step "dpkg -i"
dpkg -i "$deb" >/dev/null
getent passwd bgpedge >/dev/null || fail "user bgpedge not created"
getent group bgpedge >/dev/null || fail "group bgpedge not created"
[[ $(getent passwd bgpedge | cut -d: -f7) == /usr/sbin/nologin ]] || fail "bgpedge has a login shell"
check_stat() { # path mode owner group
	local got
	got=$(stat -c '%a %U %G' "$1")
	[[ $got == "$2 $3 $4" ]] || fail "$1 is '$got', want '$2 $3 $4'"
}
check_stat /usr/bin/bgpedge 755 root root
check_stat /etc/bgpedge 750 root bgpedge
check_stat /etc/bgpedge/bgpedge.yaml 640 root bgpedge
check_stat /var/lib/bgpedge 750 bgpedge bgpedge
check_stat /var/lib/bgpedge/exabgp 770 bgpedge bgpedge
check_stat /usr/lib/systemd/system/bgpedge.service 644 root root
grep -q 'bgpedge 1.0.0' <<<"$(/usr/bin/bgpedge version)" || fail "installed binary does not report its version"
# The service runs as its own user: it must be able to read the config.
runuser -u bgpedge -- /usr/bin/bgpedge config validate --config /etc/bgpedge/bgpedge.yaml >/dev/null ||
	fail "the bgpedge user cannot validate the installed configuration"

step "systemd-analyze verify and security"
systemd-analyze verify /usr/lib/systemd/system/bgpedge.service || fail "systemd-analyze verify"
score=$(systemd-analyze security --offline=yes /usr/lib/systemd/system/bgpedge.service 2>&1 |
	sed -n 's/.*Overall exposure level for bgpedge.service: \([0-9.]*\).*/\1/p')
[[ -n $score ]] || fail "no security score"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "security exposure $score > 2.0"
step "exposure $score"

step "upgrade keeps a modified conffile"
echo "# local change" >>/etc/bgpedge/bgpedge.yaml
VERSION=1.0.1 DIST="$work/c" scripts/package.sh "$arch" >/dev/null
dpkg -i "$work"/c/bgpedge_1.0.1*_"$arch".deb >/dev/null
grep -q 'bgpedge 1.0.1' <<<"$(/usr/bin/bgpedge version)" || fail "upgrade did not replace the binary"
grep -q '^# local change$' /etc/bgpedge/bgpedge.yaml || fail "upgrade replaced the modified conffile"
check_stat /var/lib/bgpedge 750 bgpedge bgpedge

step "remove keeps configuration and spool"
touch /var/lib/bgpedge/marker
dpkg -r bgpedge >/dev/null
[[ ! -e /usr/bin/bgpedge ]] || fail "remove left /usr/bin/bgpedge"
[[ ! -e /usr/lib/systemd/system/bgpedge.service ]] || fail "remove left the unit"
[[ -f /etc/bgpedge/bgpedge.yaml ]] || fail "remove deleted the configuration"
[[ -f /var/lib/bgpedge/marker ]] || fail "remove deleted the spool directory"

step "purge removes configuration and spool"
dpkg --purge bgpedge >/dev/null
[[ ! -e /etc/bgpedge ]] || fail "purge left /etc/bgpedge"
[[ ! -e /var/lib/bgpedge ]] || fail "purge left /var/lib/bgpedge"
installed && fail "still installed after purge"

for rpmfile in "$work"/a/*.rpm; do
	step "rpm $(basename "$rpmfile")"
	grep -q '^Name *: bgpedge' <<<"$(rpm -qip "$rpmfile")" || fail "rpm -qip"
	files=$(rpm -qlp "$rpmfile")
	for want in /usr/bin/bgpedge /etc/bgpedge/bgpedge.yaml /etc/bgpedge/exabgp.conf \
		/usr/lib/systemd/system/bgpedge.service /var/lib/bgpedge; do
		grep -qx "$want" <<<"$files" || fail "rpm lacks $want"
	done
	grep -qx /etc/bgpedge/bgpedge.yaml <<<"$(rpm -qp --configfiles "$rpmfile")" || fail "bgpedge.yaml is not %config"
	scripts=$(rpm -qp --scripts "$rpmfile")
	grep -q 'useradd --system' <<<"$scripts" || fail "rpm scripts do not create the user"
	# Every systemctl call is guarded.
	if grep -n 'systemctl' <<<"$scripts" | grep -v '^\s*#' | grep -q .; then
		guards=$(grep -c 'if \[ -d /run/systemd/system \]' <<<"$scripts")
		[[ $guards -ge 3 ]] || fail "systemctl calls in rpm scripts are not all guarded"
	fi
done
rpmfile=$(ls "$work"/a/bgpedge-*.x86_64.rpm)
scratch="$work/rpmroot"
mkdir -p "$scratch"
rpm --root "$scratch" --initdb
# --noscripts: the scratch root has no shell or useradd to run them with.
rpm --root "$scratch" --nodeps --noscripts -i "$rpmfile" 2>/dev/null
for f in usr/bin/bgpedge etc/bgpedge/bgpedge.yaml usr/lib/systemd/system/bgpedge.service; do
	[[ -f $scratch/$f ]] || fail "rpm install into a scratch root lacks /$f"
done
[[ $(stat -c %a "$scratch/etc/bgpedge/bgpedge.yaml") == 640 ]] || fail "rpm config mode"
[[ $(stat -c %a "$scratch/usr/bin/bgpedge") == 755 ]] || fail "rpm binary mode"
rpm --root "$scratch" -q bgpedge >/dev/null || fail "rpm database of the scratch root lacks bgpedge"

step "OK"
