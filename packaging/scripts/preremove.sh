#!/bin/sh
# deb prerm (remove|upgrade|…) and rpm %preun (0 remove, 1 upgrade): stop
# and disable the service only when the package goes away.
set -e
case "$1" in
	remove | 0)
		if [ -d /run/systemd/system ]; then
			systemctl disable --now bgpedge.service >/dev/null 2>&1 || true
		fi
		;;
esac
exit 0
