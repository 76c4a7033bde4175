#!/usr/bin/env bash
# package.sh — build the bgpedge .deb and .rpm packages (amd64 and arm64)
# into dist/ with nfpm (pinned in tools/go.mod). Reproducible: binaries are
# built with -trimpath and the commit's time as build date, and every file
# in the packages gets SOURCE_DATE_EPOCH (default: the commit's time) as
# its mtime, so one commit always yields byte-identical packages.
#
# Usage: scripts/package.sh [ARCH...]   (default: amd64 arm64)
# Environment: VERSION and COMMIT (default from git), SOURCE_DATE_EPOCH, DIST (default dist)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

GO=${GO:-go}
DIST=${DIST:-dist}
archs=("$@")
((${#archs[@]})) || archs=(amd64 arm64)

commit=${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo none)}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
build_date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
if [[ -z ${VERSION:-} ]]; then
	if tag=$(git describe --tags --exact-match 2>/dev/null); then
		VERSION=${tag#v}
	else
		# Sorts below any release in dpkg and rpm; starts with a digit as both require.
		VERSION="0.0.0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S).${commit}"
	fi
fi
export VERSION

for f in configs/bgpedge.yaml configs/exabgp.conf packaging/bgpedge.service docs/operations.md; do
	[[ -f $f ]] || {
		echo "package.sh: $f is missing" >&2
		exit 1
	}
done

mkdir -p "$DIST"
for arch in "${archs[@]}"; do
	# nfpm reads the binary from a fixed path (it does not expand variables in src).
	bin=.cache/package/bgpedge
	mkdir -p .cache/package
	# -buildvcs=false: the version and commit come from the flags below, so
	# the binary does not depend on the state of .git.
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -trimpath -buildvcs=false \
		-ldflags "-s -w -X github.com/bgpedge/bgpedge/agent.Version=$VERSION -X github.com/bgpedge/bgpedge/agent.Commit=$commit -X github.com/bgpedge/bgpedge/agent.BuildDate=$build_date" \
		-o "$bin" ./cmd/bgpedge
	touch -d "@$SOURCE_DATE_EPOCH" "$bin"
	for fmt in deb rpm; do
		ARCH=$arch "$GO" tool -modfile=tools/go.mod nfpm package \
			--config packaging/nfpm.yaml --packager "$fmt" --target "$DIST/" >/dev/null
	done
done
ls -1 "$DIST"/*.deb "$DIST"/*.rpm
