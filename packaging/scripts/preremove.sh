#!/bin/sh
# memberd preremove (deb: "remove"/"upgrade"; rpm: 0 = erase, 1 = upgrade).
# Stops and disables the services only when the package goes away.
set -e
case "$1" in
	remove|0) ;;
	*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	for u in memberd.service memberd-relay.service; do
		systemctl disable --now "$u" >/dev/null 2>&1 || true
	done
fi
exit 0
