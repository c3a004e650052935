#!/usr/bin/env bash
# Installs with apt-get, only when missing, the real parts the driver and the tests use:
# SoftHSM2 and OpenSC's pkcs11-spy (required), and headless Chromium (for the HTML report
# tests only) and zstd (for the tests' .zst logs), so a fresh Debian machine needs nothing by hand.
set -euo pipefail

have() { for p in "$@"; do [ -e "$p" ] && return 0; done; return 1; }
need=()
have /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so || need+=(softhsm2)
have /usr/lib/*/pkcs11-spy.so /usr/lib/*/pkcs11/pkcs11-spy.so || need+=(opensc-pkcs11 opensc)
optional=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || optional+=(chromium fonts-dejavu-core)
command -v zstd >/dev/null 2>&1 || optional+=(zstd)  # the tests' .zst copies of real logs (else those cases skip)

if [ ${#need[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
    [ ${#optional[@]} -eq 0 ] || echo "p11lens: chromium missing (the HTML report tests will skip); as root: apt-get install chromium" >&2
    [ ${#need[@]} -eq 0 ] && exit 0
    echo "p11lens: missing system packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" "${optional[@]}" >/dev/null
