#!/bin/sh
# memberd postremove: reload systemd so the removed units disappear. The
# memberd user, /etc/memberd and /var/lib/memberd are kept (ledger data).
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
