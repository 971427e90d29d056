#!/usr/bin/env bash
# Puts promtool, Prometheus's rule checker, into a directory (default .venv/bin): the one binary,
# unpacked from Debian's prometheus package without installing the package (no server, service
# or user). tests/deploy/test_monitoring.py checks deploy/monitoring/ with it.
set -euo pipefail
target=$(cd "${1:-.venv/bin}" && pwd)
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "install_promtool: needs apt-get and dpkg-deb (Debian, Ubuntu); elsewhere put promtool on PATH" >&2
  exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's download user writes there
download() { (cd "$work" && apt-get download -qq prometheus) >/dev/null 2>&1; }
if ! download; then  # no package lists yet
  [ "$(id -u)" -eq 0 ] || {
    echo "install_promtool: apt-get cannot find the prometheus package; run apt-get update as root" >&2
    exit 1
  }
  apt-get update -qq
  download
fi
dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -O ./usr/bin/promtool > "$work/promtool"
install -m 0755 "$work/promtool" "$target/promtool"
"$target/promtool" --version | head -n 1
