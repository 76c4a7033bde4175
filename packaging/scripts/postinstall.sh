#!/bin/sh
# deb postinst (configure [old-version]) and rpm %post (1 install, 2 upgrade).
# A fresh install enables the service but does not start it: edit
# /etc/bgpedge/bgpedge.yaml, then `systemctl start bgpedge`. So does a
# reinstall after a remove that disabled an enabled service (preremove.sh).
# An upgrade restarts a running service. Without systemd (containers,
# chroots) nothing is started.
set -e
chown bgpedge:bgpedge /var/lib/bgpedge /var/lib/bgpedge/exabgp
chmod 0750 /var/lib/bgpedge
chmod 0770 /var/lib/bgpedge/exabgp
fresh=0
case "$1" in
	configure) [ -z "$2" ] && fresh=1 ;;
	1) fresh=1 ;;
esac
if [ -e /var/lib/bgpedge/.enabled-before-remove ]; then
	fresh=1
	rm -f /var/lib/bgpedge/.enabled-before-remove
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if [ "$fresh" = 1 ]; then
		systemctl enable bgpedge.service >/dev/null 2>&1 || true
	else
		systemctl try-restart bgpedge.service >/dev/null 2>&1 || true
	fi
fi
exit 0
