#!/bin/sh
# memberd postinstall (deb: "configure" [old-version]; rpm: 1 = install,
# 2 = upgrade). Idempotent.
set -e

case "$1" in
	configure|1|2) ;;
	*) exit 0 ;;
esac

# System user and group for both services (no login, home = state dir).
if ! getent group memberd >/dev/null 2>&1; then
	groupadd --system memberd
fi
if ! getent passwd memberd >/dev/null 2>&1; then
	useradd --system --gid memberd --home-dir /var/lib/memberd --no-create-home \
		--shell /usr/sbin/nologin --comment "memberd appliance" memberd
fi

# /etc/memberd: config readable by the service, writable only by root.
if [ -d /etc/memberd ]; then
	chown root:memberd /etc/memberd
	chmod 0750 /etc/memberd
	for f in /etc/memberd/memberd.yaml /etc/memberd/relay.yaml; do
		if [ -f "$f" ]; then chgrp memberd "$f"; fi
	done
fi

# UDP buffer sizes for QUIC, now (the file applies them at every boot).
if command -v sysctl >/dev/null 2>&1; then
	sysctl -q -p /usr/lib/sysctl.d/60-memberd.conf || \
		echo "memberd: could not apply /usr/lib/sysctl.d/60-memberd.conf now (container?); it applies at boot" >&2
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	# Restart what already runs (upgrade); a fresh install is left stopped:
	# memberd.yaml and the HSM PIN must be set up first.
	for u in memberd.service memberd-relay.service; do
		if systemctl is-active --quiet "$u"; then
			systemctl try-restart "$u" || true
		fi
	done
fi

if [ ! -e /etc/memberd/hsm.pin ] && [ ! -e /etc/memberd/relay.pin ]; then
	echo "memberd: edit /etc/memberd/memberd.yaml (or relay.yaml), put the HSM PIN in /etc/memberd/hsm.pin (root, 0600), then: systemctl enable --now memberd" >&2
fi
exit 0
