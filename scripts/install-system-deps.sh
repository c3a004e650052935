#!/usr/bin/env bash
# Installs the real PKCS#11 parts the tests and the driver use (SoftHSM2, OpenSC's pkcs11-spy)
# with apt-get, only when they are missing, so a fresh Debian machine needs nothing by hand.
set -euo pipefail
need=()
have_lib() { for p in "$@"; do [ -e "$p" ] && return 0; done; return 1; }
have_lib /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so || need+=(softhsm2)
have_lib /usr/lib/*/pkcs11-spy.so /usr/lib/*/pkcs11/pkcs11-spy.so || need+=(opensc-pkcs11 opensc)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
    echo "p11lens: missing system packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
