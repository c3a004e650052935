#!/bin/bash
# docker/slim-rootfs.sh: make the runtime stage's Debian root filesystem small (run by
# docker/Dockerfile's `rootfs` stage, as root, after apt-get installed what the image runs and
# the p11lens user was made; the final image is that tree copied onto an empty one, so what is
# removed here does not sit in a lower layer).
#
# Goes: the package tools and what only they need (apt, debconf, perl-base, gpgv and the archive
# keyring, ucf, adduser, init-system-helpers) and the system-administration tools a container of
# this image never runs (login, passwd, the PAM stack, util-linux, e2fsprogs, mount, tar,
# diffutils, hostname, sysvinit-utils), with the libraries no remaining program loads;
# glibc's gconv charset modules (UTF-8, ASCII and Latin-1 are built into glibc; nothing here
# converts other charsets); the Python sources of the standard library (byte code stays), its
# tests and help() topics; Python's dbm.ndbm module (Berkeley DB went with PAM); the caches and
# logs apt and dpkg left.
# Stays: dpkg and its status file (`dpkg -l` lists what the image holds), bash, dash, coreutils,
# findutils, grep, sed, gzip, Python 3.11, SoftHSM2, OpenSC, and every library they link
# (checked below: a missing library fails the build).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

purge=(
    apt libapt-pkg6.0 gpgv debian-archive-keyring debconf ucf adduser init-system-helpers
    perl-base sensible-utils
    login passwd libpam-modules libpam-modules-bin libpam-runtime libpam0g
    libsemanage2 libsemanage-common libsepol2 libaudit1 libaudit-common libcap-ng0 libdb5.3
    util-linux util-linux-extra mount e2fsprogs libext2fs2 libss2 logsave libsmartcols1
    tar diffutils hostname sysvinit-utils ncurses-bin bsdutils
    libgnutls30 libnettle8 libhogweed6 libtasn1-6 libp11-kit0 libidn2-0 libunistring2
    libsystemd0 libgcrypt20 libgpg-error0 libseccomp2 libxxhash0 libudev1
)
installed=()
for p in "${purge[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' && installed+=("$p")
done
# Their maintainer scripts need what goes with them (perl, debconf, pam-auth-update): dpkg
# removes the files without running them.
for p in "${installed[@]}"; do
    rm -f /var/lib/dpkg/info/"$p".prerm /var/lib/dpkg/info/"$p".postrm \
          /var/lib/dpkg/info/"$p":*.prerm /var/lib/dpkg/info/"$p":*.postrm
done
dpkg --purge --force-remove-essential --force-depends "${installed[@]}" >/tmp/purge.log 2>&1 \
    || { cat /tmp/purge.log >&2; exit 1; }
rm -f /tmp/purge.log

find /usr/lib/x86_64-linux-gnu/gconv -type f ! -name 'gconv-modules*' -delete
rm -rf /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.d /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache
rm -rf /var/lib/apt /var/cache/apt /var/cache/debconf /var/cache/ldconfig/aux-cache \
       /var/log/* /var/lib/dpkg/*-old /usr/share/man/* /usr/share/info/* \
       /usr/share/lintian /usr/share/perl5 /usr/share/bash-completion /usr/share/common-licenses \
       /etc/apt /etc/cron.daily /etc/logrotate.d /etc/pam.d /etc/security /etc/debconf.conf
# dbm.ndbm's module is the one thing of Python's that links Berkeley DB (libdb5.3, gone with PAM).
rm -f /usr/lib/python3.11/lib-dynload/_dbm.cpython-311-*.so
# Python's standard library: its test support and help() topics go; its modules become
# sourceless byte code (.pyc in the .py's place), as trim-venv.sh does for the dependencies.
stdlib=/usr/lib/python3.11
rm -rf "$stdlib"/test "$stdlib"/pydoc_data "$stdlib"/lib2to3/tests "$stdlib"/idlelib "$stdlib"/tkinter "$stdlib"/turtledemo
python3 -m compileall -q -b -f -x '/lib2to3/tests/' "$stdlib" >/dev/null || true
find "$stdlib" -name '*.py' \( -type f -o -type l \) | while read -r py; do [ ! -f "${py}c" ] || rm -f "$py"; done
find "$stdlib" -depth -type d -name __pycache__ -exec rm -rf {} +
python3 -c 'import os, site, encodings, json, ssl, sqlite3, ctypes, zoneinfo, multiprocessing, concurrent.futures, email, logging' \
    || { echo "slim-rootfs: the sourceless standard library does not import" >&2; exit 1; }

# the copyright files stay (as in debian:*-slim), with those of the purged packages gone
for d in /usr/share/doc/*; do
    [ -e "/var/lib/dpkg/info/$(basename "$d").list" ] || ls /var/lib/dpkg/info/"$(basename "$d")":*.list >/dev/null 2>&1 || rm -rf "$d"
done
ldconfig

# Every remaining program and library finds every library it links.
missing=$({ find /usr/bin /usr/sbin /usr/lib /opt -type f \( -perm -u+x -o -name '*.so*' \) 2>/dev/null || true; } | while read -r f; do
    ldd "$f" 2>/dev/null | sed -n "s|^[[:space:]]*\(.*not found\)|$f: \1|p" || true
done)
[ -z "$missing" ] || { echo "slim-rootfs: libraries missing after the purge:" >&2; echo "$missing" >&2; exit 1; }
echo "slim-rootfs: purged ${#installed[@]} packages; $(dpkg-query -W 2>/dev/null | wc -l) left; $(du -sxm / 2>/dev/null | cut -f1) MiB"
