#!/bin/sh
# deb prerm (remove|upgrade|…) and rpm %preun (0 remove, 1 upgrade): stop
# and disable the service only when the package goes away. Whether it was
# enabled is remembered under /var/lib/bgpedge (which remove keeps, purge
# deletes), so a reinstall enables it again, and one the administrator had
# disabled stays disabled.
set -e
case "$1" in
	remove | 0)
		if [ -d /run/systemd/system ]; then
			if systemctl is-enabled --quiet bgpedge.service 2>/dev/null; then
				touch /var/lib/bgpedge/.enabled-before-remove 2>/dev/null || true
			fi
			systemctl disable --now bgpedge.service >/dev/null 2>&1 || true
		fi
		;;
esac
exit 0
