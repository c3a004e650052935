#!/usr/bin/env bash
# Installs the real PKCS#11 parts the tests and the driver use (SoftHSM2, OpenSC's pkcs11-spy)
# with apt-get, only when they are missing, so a fresh Debian machine needs nothing by hand.
set -euo pipefail

# ---- reports (issue 5): headless Chromium for the HTML report tests ---------------------------
# The report tests load report.html in real Chromium (no console errors, a screenshot). Optional:
# reports are made without it, so a non-root run only says how to get it, and never fails here.
# (Kept before the early exit below, which leaves when the PKCS#11 parts are already present.)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "p11lens: chromium missing (the HTML report tests will skip); as root: apt-get install chromium" >&2
    else
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
    fi
fi
# ---- end reports block ----------------------------------------------------------------------

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
