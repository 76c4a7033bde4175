#!/usr/bin/env bash
# deps.sh — install what the tests need, idempotently: Debian packages (only
# when one is missing, so a warm machine makes no network call), a JDK and
# Maven for the Kafka broker, the Kafka jars, exaBGP 5 from PyPI, and the Go
# modules.
#
# Environment:
#   BGPEDGE_DEBS        extra Debian packages to require, space-separated
#   BGPEDGE_SKIP_APT=1  never call apt-get (report what is missing and go on)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# The Debian packages the tests use. Extend this list when a test needs a new
# external component (the package name, not the binary name).
debs=(
	exabgp
	gobgpd
	frr
	tshark
	nats-server
	kcat
	rpm
	systemd-container
	debootstrap
	default-jdk-headless
	maven
	python3-venv
	gcc
	make
	git
	# scripts/powercut-test.sh: Debian's kernel booted under qemu (software
	# emulation), the virtual disk made and read by e2fsprogs; cpio checks its
	# initramfs writer
	qemu-system-x86
	linux-image-amd64
	e2fsprogs
	cpio
)
read -r -a extra <<<"${BGPEDGE_DEBS:-}"
debs+=("${extra[@]}")

log() { printf 'deps.sh: %s\n' "$*" >&2; }

missing=()
for p in "${debs[@]}"; do
	[[ -n $p ]] || continue
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
# A JDK or Maven installed some other way is as good as Debian's.
if command -v java >/dev/null && command -v mvn >/dev/null; then
	keep=()
	for p in "${missing[@]}"; do
		[[ $p == default-jdk-headless || $p == maven ]] || keep+=("$p")
	done
	missing=("${keep[@]}")
fi

if ((${#missing[@]} > 0)); then
	if [[ ${BGPEDGE_SKIP_APT:-} == 1 ]]; then
		log "missing Debian packages (not installing, BGPEDGE_SKIP_APT=1): ${missing[*]}"
	else
		sudo=()
		if [[ $(id -u) != 0 ]]; then
			command -v sudo >/dev/null || {
				log "need root or sudo to install: ${missing[*]}"
				exit 1
			}
			sudo=(sudo)
		fi
		log "installing Debian packages: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		"${sudo[@]}" apt-get update -qq
		# tshark asks whether non-root users may capture; the default (no) is fine.
		"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
fi

for bin in java mvn go; do
	command -v "$bin" >/dev/null || {
		log "$bin not found after installation"
		exit 1
	}
done

# The broker jars (cached; a no-op once downloaded).
"$root/scripts/kafka.sh" fetch

# exaBGP 5 from PyPI beside Debian's 4.2, for the lab tests (cached; a venv
# is not relocatable, so it is built in place and marked complete last).
exa5_version=5.0.15
exa5=$root/.cache/exabgp-$exa5_version
if [[ ! -f $exa5/.complete ]]; then
	log "installing exaBGP $exa5_version from PyPI into $exa5"
	rm -rf "$exa5"
	python3 -m venv "$exa5"
	"$exa5/bin/pip" install --quiet --disable-pip-version-check "exabgp==$exa5_version"
	touch "$exa5/.complete"
fi
ln -sfn "exabgp-$exa5_version" "$root/.cache/exabgp5"

# Go itself is not a Debian package of the right version: check it.
want=$(awk '$1 == "go" { print $2 }' "$root/go.mod")
have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
	echo "deps.sh: Go $want or newer is needed (found: ${have:-none}); see https://go.dev/dl" >&2
	exit 1
fi
go mod download
