#!/bin/sh
# Runs before the files are unpacked (deb preinst, rpm %pre): the service
# user must exist so /var/lib/bgpedge and /etc/bgpedge get their owner.
set -e
if ! getent group bgpedge >/dev/null 2>&1; then
	groupadd --system bgpedge
fi
if ! getent passwd bgpedge >/dev/null 2>&1; then
	useradd --system --gid bgpedge --home-dir /var/lib/bgpedge --no-create-home \
		--shell /usr/sbin/nologin --comment "bgpedge agent" bgpedge
fi
exit 0
