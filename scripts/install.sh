#!/usr/bin/env bash
# Installs edge-agent as a systemd service on a Raspberry Pi (Raspberry Pi OS / Debian):
# a system user in the video and plugdev groups, a venv under /opt/edge-agent, the config in
# /etc/edge-agent (the reference config when none exists; never overwritten), the unit, and a
# udev rule for the Coral USB Accelerator under both of its USB ids (1a6e:089a before its
# firmware is loaded, 18d1:9302 after). Idempotent: run it again to upgrade.
#
#   sudo scripts/install.sh [--no-start] [--dry-run]
#   sudo scripts/install.sh --uninstall [--purge]    (--purge also removes config and data)
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=/opt/edge-agent
CONF=/etc/edge-agent
UNIT=/etc/systemd/system/edge-agent.service
UDEV=/etc/udev/rules.d/71-edge-agent-coral.rules
USER_NAME=edge-agent
start=1 dry=0 uninstall=0 purge=0
for arg in "$@"; do
  case "$arg" in
    --no-start) start=0 ;;
    --dry-run) dry=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

run() {  # every change goes through here, so --dry-run shows exactly what would be done
  if [ "$dry" = 1 ]; then echo "would run: $*"; else "$@"; fi
}

if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo)" >&2; exit 1
fi

if [ "$uninstall" = 1 ]; then
  run systemctl disable --now edge-agent.service || true
  run rm -f "$UNIT" "$UDEV"
  run systemctl daemon-reload || true
  run udevadm control --reload || true
  run rm -rf "$PREFIX"
  if [ "$purge" = 1 ]; then
    run rm -rf "$CONF" /var/lib/edge-agent
    run userdel "$USER_NAME" || true
  else
    echo "kept $CONF and /var/lib/edge-agent (use --purge to remove them)"
  fi
  exit 0
fi

if ! id "$USER_NAME" >/dev/null 2>&1; then
  run useradd --system --no-create-home --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin "$USER_NAME"
fi
for g in video plugdev; do
  if getent group "$g" >/dev/null; then run usermod -a -G "$g" "$USER_NAME"; fi
done
# picamera2 comes from apt (python3-picamera2, built against the system's libcamera): when it is
# installed, the venv sees the system packages so that source.kind = "picamera2" can import it
venv_opts=""
if python3 -c "import picamera2" >/dev/null 2>&1; then venv_opts="--system-site-packages"; fi
if [ ! -x "$PREFIX/venv/bin/python" ]; then run python3 -m venv $venv_opts "$PREFIX/venv"; fi
run "$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
run "$PREFIX/venv/bin/python" -m pip install -q --upgrade .  # the notify protocol needs no systemd-python
run install -d -m 0750 -o root -g "$USER_NAME" "$CONF"
if [ ! -e "$CONF/agent.toml" ]; then
  run install -m 0640 -o root -g "$USER_NAME" config/agent.example.toml "$CONF/agent.toml"
  echo "installed the reference config at $CONF/agent.toml: edit [model], [source] and [mqtt]"
else
  # a config put there beforehand must be readable by the service user (its content is kept)
  run chgrp "$USER_NAME" "$CONF/agent.toml"
  run chmod g+r "$CONF/agent.toml"
fi
for cred in mqtt_password update.key; do  # LoadCredential= needs the files to exist
  if [ ! -e "$CONF/$cred" ]; then run install -m 0600 /dev/null "$CONF/$cred"; fi
done
run install -m 0644 systemd/edge-agent.service "$UNIT"
tmp_rule=$(mktemp)
cat > "$tmp_rule" <<'RULES'
# Coral USB Accelerator: before its firmware is loaded, and after
SUBSYSTEM=="usb", ATTRS{idVendor}=="1a6e", ATTRS{idProduct}=="089a", GROUP="plugdev", MODE="0660"
SUBSYSTEM=="usb", ATTRS{idVendor}=="18d1", ATTRS{idProduct}=="9302", GROUP="plugdev", MODE="0660"
RULES
run install -m 0644 "$tmp_rule" "$UDEV"
rm -f "$tmp_rule"
run udevadm control --reload || true
run udevadm trigger --subsystem-match=usb || true
run systemctl daemon-reload
if [ "$start" = 1 ]; then
  # one start (an upgrade restarts a running service), not two: each counts against StartLimitBurst
  run systemctl enable edge-agent.service
  run systemctl restart edge-agent.service
else
  run systemctl enable edge-agent.service
fi
echo "edge-agent installed: systemctl status edge-agent; journalctl -u edge-agent -f"
