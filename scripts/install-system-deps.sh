#!/usr/bin/env bash
# Installs the system packages efird's tests and demo run against, on Debian 12 (as root).
#
# QEMU >= 10 comes from bookworm-backports. The backports source is derived from the
# machine's own Debian source entry (same mirror, same keyring) with the suite switched,
# so no mirror is ever hard-coded here.
set -euo pipefail

# etcd-server: the fleet store's tests and benchmark start their own etcd cluster on
# loopback ports (tests/etcd_cluster.py); Debian's etcd.service, if it runs, does not matter.
PACKAGES_MAIN=(ovmf efitools openssl python3-venv python3-dev gcc make sqlite3 libseccomp2
               etcd-server)
PACKAGES_BPO=(qemu-system-x86 qemu-utils)
STAMP=/var/lib/efird-system-deps.v2

log() { echo "install-system-deps: $*" >&2; }

have_all() {
    command -v qemu-system-x86_64 >/dev/null || return 1
    local major
    major=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)
    [ "${major:-0}" -ge 10 ] || return 1
    for p in "${PACKAGES_MAIN[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || return 1; done
    return 0
}

if [ -f "$STAMP" ] && have_all; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    log "must run as root to install packages (missing: QEMU >= 10, ovmf, efitools, ...)"; exit 1
fi
. /etc/os-release
codename=${VERSION_CODENAME:-bookworm}
target=/etc/apt/sources.list.d/efird-backports.sources

if ! grep -rqs -- "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri="" signed=""
    # deb822 sources (Debian 12 default): take the entry that carries the release suite.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        entry=$(awk -v RS= -v s="$codename" '$0 ~ ("Suites:[^\n]*(^|[ \t])" s "([ \t]|$)") && $0 !~ /security/ {print; exit}' "$f")
        if [ -n "$entry" ]; then
            uri=$(printf '%s\n' "$entry" | sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' | head -n1)
            signed=$(printf '%s\n' "$entry" | sed -n 's/^Signed-By:[[:space:]]*//p' | head -n1)
            [ -n "$uri" ] && break
        fi
    done
    # one-line sources.list format
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk -v s="$codename" '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i==s) {u=$(i-1); print u; exit}}' /etc/apt/sources.list)
    fi
    if [ -z "$uri" ]; then
        log "could not find a Debian '$codename' source entry to derive ${codename}-backports from"; exit 1
    fi
    log "adding ${codename}-backports from $uri"
    {
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: ${codename}-backports"
        echo "Components: main"
        [ -n "$signed" ] && echo "Signed-By: $signed"
    } > "$target"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES_MAIN[@]}"
apt-get install -y -q --no-install-recommends -t "${codename}-backports" "${PACKAGES_BPO[@]}"
if ! have_all; then
    log "installed packages, but QEMU >= 10 or a required package is still missing"; exit 1
fi
touch "$STAMP"
log "system packages ready: $(qemu-system-x86_64 --version | head -n1)"
