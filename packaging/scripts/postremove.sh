#!/bin/sh
# deb postrm (remove|purge|upgrade|…) and rpm %postun (0 remove, 1 upgrade).
# purge deletes the spool and state under /var/lib/bgpedge (events not yet
# forwarded are lost with it) and the configuration under /etc/bgpedge. The bgpedge user is kept (files elsewhere may
# still belong to it), as Debian recommends for system users.
set -e
case "$1" in
	purge)
		rm -rf /var/lib/bgpedge /etc/bgpedge
		;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
