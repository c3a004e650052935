#!/usr/bin/env bash
# docker/check.sh: build the p11lens image and run its default command for real, without a
# Docker engine (buildah, chroot isolation), then check the reports it wrote.
#
#   sudo bash docker/check.sh          # from anywhere; needs root (apt-get, container storage)
#
# Steps (each is idempotent; a second run reuses the base image, the build cache and the tools):
#   1. install buildah, podman and debootstrap with apt-get when missing
#   2. find pip's index settings on this host, to hand them to pip inside the build
#   3. make sure `debian:bookworm-slim` exists locally: use it if present, else pull it, else
#      debootstrap a minbase bookworm from this host's own apt mirror, slim it like the official
#      image, cache it as a tarball and import it under that name
#   4. buildah bud --isolation chroot -f docker/Dockerfile -t p11lens .
#   5. run the image's own ENTRYPOINT + CMD (the `demo`: drive smoke + p11lens run) in a
#      container, with host folders mounted on /tokens, /traces and /reports
#   6. check that the trace and the report files exist and name the smoke workload's calls, and
#      that the image ships no toolchain (cargo, rustc, gcc, pip) but the native engine
#   7. print the image size and check it against the budget (400 MB)
# Any failure stops the script with "check.sh: FAIL: <what>" and a non-zero exit.
#
# Knobs (environment):
#   P11LENS_IMAGE=p11lens                   tag to build
#   P11LENS_DOCKER_CACHE=/var/cache/p11lens-docker   where the debootstrapped base tarball is kept
#   P11LENS_DEBIAN_MIRROR=URL               apt mirror for debootstrap (default: this host's)
#   P11LENS_CHECK_OUT=DIR                   host folder for tokens/, traces/, reports/
#                                           (default: a fresh temp dir, kept for inspection)
#   P11LENS_REBUILD_BASE=1                  drop the cached base and debootstrap it again
#   P11LENS_MAX_IMAGE_MB=400                fail when the image is larger (MB as buildah counts: 10^6 bytes)
#   STORAGE_DRIVER=vfs                      containers/storage driver, if overlay is unavailable
#
# Disk: the build cache (buildah --layers) keeps earlier builds' layers; `buildah rmi --prune`
# frees them (the next build then downloads the Python dependencies again).
set -euo pipefail

IMAGE=${P11LENS_IMAGE:-p11lens}
BASE=docker.io/library/debian:bookworm-slim
CACHE=${P11LENS_DOCKER_CACHE:-/var/cache/p11lens-docker}
BASE_TAR=$CACHE/debian-bookworm-slim.tar
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\ncheck.sh: FAIL: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "check.sh: FAIL: command failed (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

[ "$(id -u)" -eq 0 ] || fail "run as root (apt-get, debootstrap and the container storage need it): sudo bash $0"
cd "$REPO"
[ -f pyproject.toml ] && [ -f docker/Dockerfile ] || fail "$REPO does not look like the p11lens repository"

# --- 1. tools ---------------------------------------------------------------------------------
step "1/7 tools: buildah, podman, debootstrap"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# debootstrap checks the Release signature with Debian's keyring.
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
if [ ${#missing[@]} -gt 0 ]; then
    info "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp /tmp/p11lens-apt.XXXXXX.log)
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } > "$apt_log" 2>&1 \
        || { tail -n 20 "$apt_log" >&2; fail "apt-get install ${missing[*]} failed (log: $apt_log)"; }
    rm -f "$apt_log"
fi
info "$(buildah --version); $(podman --version); debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"

# --- 2. pip settings for the build --------------------------------------------------------------
# pip inside the build must reach the same package index as pip on this host.  Read pip's own view
# of its configuration (files + PIP_* environment) and pass on what a container can use:
#   index-url / extra-index-url / trusted-host: as build args, when they are http(s) URLs
#     (file:// indexes and find-links are folders of this host, invisible in the build);
#   cert: a CA bundle (e.g. of a TLS-intercepting proxy) is bind-mounted into the build's RUN
#     steps and named by the PIP_CERT build arg; nothing of it stays in the image.
step "2/7 pip index settings for the build"
pipcfg() {  # value of a pip setting: environment first, then pip's config files
    local env=$1 key=$2 v=${!1:-}
    if [ -z "$v" ] && command -v python3 >/dev/null; then
        v=$(python3 -m pip config get "global.$key" 2>/dev/null || true)
    fi
    printf '%s' "$v"
}
http_only() { tr ' \n' '\n\n' | grep -E '^https?://' | paste -sd' ' - || true; }
build_args=() build_vols=()
index_url=$(pipcfg PIP_INDEX_URL index-url | http_only)
extra_urls=$(pipcfg PIP_EXTRA_INDEX_URL extra-index-url | http_only)
trusted=$(pipcfg PIP_TRUSTED_HOST trusted-host)
cert=$(pipcfg PIP_CERT cert)
[ -n "$index_url" ] && build_args+=(--build-arg "PIP_INDEX_URL=$index_url")
[ -n "$extra_urls" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra_urls")
[ -n "$trusted" ] && build_args+=(--build-arg "PIP_TRUSTED_HOST=$trusted")
if [ -n "$cert" ]; then
    [ -r "$cert" ] || fail "pip's cert setting names $cert, which is not readable"
    build_vols+=(-v "$(readlink -f "$cert"):/run/p11lens-build/pip-cert.pem:ro")
    build_args+=(--build-arg "PIP_CERT=/run/p11lens-build/pip-cert.pem")
    # cargo (the wheel stage fetches the crates from crates.io) trusts the same bundle
    build_args+=(--build-arg "CARGO_HTTP_CAINFO=/run/p11lens-build/pip-cert.pem")
fi
info "index-url: ${index_url:-PyPI (the pip default)}"
info "extra-index-url: ${extra_urls:-none usable in a container}"
info "trusted-host: ${trusted:-none}"
info "cert: ${cert:-the pip default CA store}"

# --- 3. base image ------------------------------------------------------------------------------
step "3/7 base image $BASE"
have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# The mirror this host's apt uses (deb822 .sources or one-line .list), the debian-security one too.
apt_uris() {
    {
        grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources | sed -E 's/^[[:space:]]*URIs:[[:space:]]*//' | tr ' ' '\n'
        grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            | sed -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/'
    } | grep -E '^(https?|file)://' || true
}
mirror=${P11LENS_DEBIAN_MIRROR:-$(apt_uris | grep -v -- '-security' | grep -E '/debian/?$' | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
security=$(apt_uris | grep -E 'debian-security/?$' | head -n1)
security=${security:-http://deb.debian.org/debian-security}

# Slim a debootstrapped tree the way Debian's official -slim images are slimmed (debuerreotype):
# no docs, man pages, locales; apt that cleans up after itself; no host identity left behind.
slim_rootfs() {
    local r=$1
    mkdir -p "$r/etc/dpkg/dpkg.cfg.d" "$r/etc/apt/apt.conf.d" "$r/etc/apt/sources.list.d"
    cat > "$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# as in debian:*-slim: keep copyright files, drop the rest of the documentation and translations
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat > "$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' > "$r/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' > "$r/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
    # the same suites as the official image, from the same mirror this host uses
    rm -f "$r/etc/apt/sources.list"
    cat > "$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/groff/* "$r"/usr/share/lintian/* \
           "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
           "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/tmp/* "$r"/root/.bash_history
    find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    # the runtime provides these
    rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
    : > "$r/etc/machine-id"
}

if [ "${P11LENS_REBUILD_BASE:-0}" = 1 ]; then
    info "P11LENS_REBUILD_BASE=1: dropping the cached base"
    rm -f "$BASE_TAR"
    buildah rmi -f "$BASE" >/dev/null 2>&1 || true
fi
if have_image "$BASE"; then
    info "present in local storage"
elif timeout 120 buildah pull -q "$BASE" >/dev/null 2>&1; then
    info "pulled from the registry"
else
    info "not in local storage and cannot be pulled: importing a debootstrapped one"
    if [ -s "$BASE_TAR" ]; then
        info "reusing the cached base $BASE_TAR"
    else
        mkdir -p "$CACHE"
        rootfs=$CACHE/rootfs.tmp
        rm -rf "$rootfs"
        info "debootstrap --variant=minbase bookworm from $mirror (about a minute)"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$CACHE/debootstrap.log" 2>&1 \
            || fail "debootstrap failed; see $CACHE/debootstrap.log"
        slim_rootfs "$rootfs"
        tar --numeric-owner --xattrs -C "$rootfs" -cf "$BASE_TAR.tmp" . || fail "tar of the base rootfs failed"
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$rootfs"
        info "cached $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
    fi
    # podman import shares buildah's storage (/var/lib/containers/storage); the fully qualified
    # name is what FROM debian:bookworm-slim resolves to.
    podman import -q --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$BASE_TAR" "$BASE" >/dev/null || fail "podman import of $BASE_TAR failed"
    have_image "$BASE" || fail "$BASE is still not in local storage after the import"
    info "imported as $BASE"
fi

# --- 4. build -------------------------------------------------------------------------------------
# --layers keeps each step's result, so a rebuild after a code change redoes only what changed.
# --jobs 2: the wheel stage (Rust build) and the builder's dependency download run side by side.
step "4/7 buildah bud --isolation chroot -f docker/Dockerfile -t $IMAGE ."
build_log=$(mktemp /tmp/p11lens-build.XXXXXX.log)
build_start=$(date +%s)
if ! buildah bud --isolation chroot --layers --pull-never --jobs 2 \
        -f docker/Dockerfile --ignorefile docker/Dockerfile.dockerignore \
        "${build_args[@]}" "${build_vols[@]}" -t "$IMAGE" . > "$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    fail "image build failed (full log: $build_log)"
fi
tail -n 3 "$build_log" | sed 's/^/    /'
info "built in $(( $(date +%s) - build_start ))s"
rm -f "$build_log"

# --- 5. run the default command -------------------------------------------------------------------
step "5/7 run the image's default command (ENTRYPOINT + CMD) with host folders mounted"
out=${P11LENS_CHECK_OUT:-$(mktemp -d /tmp/p11lens-check.XXXXXX)}
mkdir -p "$out/tokens" "$out/traces" "$out/reports"
rm -rf "${out:?}"/tokens/* "${out:?}"/traces/* "${out:?}"/reports/*
# The container runs as the image's non-root user; let it write the mounted folders.
chmod 1777 "$out/tokens" "$out/traces" "$out/reports"

user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
case ${user%%:*} in ''|0|root) fail "the image runs as root (USER '$user'); it must run as a non-root user" ;; esac
# The image's own default command, read from its config, so this runs what `docker run` would.
mapfile -t default_cmd < <(buildah inspect --type image \
    --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
[ ${#default_cmd[@]} -gt 0 ] || fail "the image has no ENTRYPOINT/CMD"
info "user $user; default command: ${default_cmd[*]}"

ctr=$(buildah from --pull-never "$IMAGE") || fail "buildah from $IMAGE failed"
trap 'buildah umount "$ctr" >/dev/null 2>&1; buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
# buildah 1.28's `run` mounts the image's declared VOLUMEs as anonymous volumes and, at random
# (map order), on top of a -v bind to the same path.  Dropping the declarations from this working
# container (not from the image) leaves our binds as the only mounts there, as `docker run -v` does.
buildah config --volume /tokens- --volume /traces- --volume /reports- "$ctr"
# As compose.yaml runs it: the three folders mounted, a tmpfs on /tmp.
run() {
    buildah run --isolation chroot --mount type=tmpfs,destination=/tmp \
        -v "$out/tokens:/tokens" -v "$out/traces:/traces" -v "$out/reports:/reports" "$ctr" -- "$@"
}
# compose.yaml sets read_only: true.  buildah run has no read-only root, but the container's
# overlay upper layer ("diff" beside its mount point) collects every write to the root filesystem:
# after the run it must hold nothing of the container user's (buildah itself adds /run).
root_mnt=$(buildah mount "$ctr")
upper=$(dirname "$root_mnt")/diff

run p11lens --version | sed 's/^/    /' || fail "p11lens is not on the image's PATH"
# The image ships no toolchain: the wheel was built in a stage of its own.
tools=$(run sh -c 'for t in cargo rustc rustup maturin gcc cc ld pip pip3; do command -v "$t"; done; ls -d /root/.cargo /root/.rustup /usr/lib/rustlib 2>/dev/null; true' 2>/dev/null || true)
[ -z "$tools" ] || fail "the image ships build tools: $(echo $tools)"
run python3 -c 'import pipeline._native as n; print("    native engine:", n.__file__)' || fail "the image has no native engine"
info "no cargo, rustc, rustup, maturin, gcc, ld or pip in the image"
run_log=$out/run.log
if ! run "${default_cmd[@]}" > "$run_log" 2>&1; then
    tail -n 30 "$run_log" >&2
    fail "the default command failed (log: $run_log)"
fi
tail -n 15 "$run_log" | sed 's/^/    /'
if [ -d "$upper" ]; then
    wrote=$(cd "$upper" && find . -mindepth 1 \( ! -user 0 -o ! -path './run*' \) | head -n 20)
    [ -z "$wrote" ] || fail "the default command wrote to the root filesystem, which compose.yaml mounts read-only: $(echo $wrote)"
    info "read-only root: nothing written outside /tokens, /traces, /reports, /tmp"
else
    info "read-only root: not checked (storage driver without an overlay upper layer)"
fi

# --- 6. check the outputs ------------------------------------------------------------------------
step "6/7 check the trace and the reports in $out"
trace=$out/traces/smoke.log
[ -s "$trace" ] || fail "no trace written: $trace is missing or empty"
[ -s "$trace.truth.json" ] || fail "no ground truth written: $trace.truth.json is missing or empty"
info "trace: $(wc -l < "$trace") lines, $(grep -cE '^[0-9]+: C_' "$trace" || true) calls"
for f in report.html report.md report.txt calls.parquet manifest.json; do
    [ -s "$out/reports/$f" ] || fail "report file missing or empty: $out/reports/$f"
    info "ok  $f ($(stat -c %s "$out/reports/$f") bytes)"
done
# The smoke workload makes a key pair and signs with it: the spy must have seen those calls, the
# call records must hold them, and the reports must name them.
calls=(C_GenerateKeyPair C_Sign)
for c in "${calls[@]}"; do
    grep -qE "^[0-9]+: $c\b" "$trace" || fail "the trace has no $c call: the smoke workload did not run through the spy"
    grep -qw "$c" "$out/reports/report.md" || fail "report.md does not name $c"
    grep -qw "$c" "$out/reports/report.txt" || fail "report.txt does not name $c"
    grep -qw "$c" "$out/reports/report.html" || fail "report.html does not name $c"
done
info "report.md, report.txt and report.html name ${calls[*]}"
# calls.parquet, read with the image's own polars: one row per call, those functions among them.
counts=$(run python3 -c '
import sys, polars as pl
df = pl.read_parquet("/reports/calls.parquet")
n = {f: df.filter(pl.col("func").cast(pl.String) == f).height for f in sys.argv[1:]}
print(df.height, *(f"{f}={k}" for f, k in n.items()))
sys.exit(0 if df.height and all(n.values()) else 1)
' "${calls[@]}") || fail "calls.parquet lacks rows for ${calls[*]}: $counts"
info "calls.parquet: $counts (rows, then rows per function)"
# The lab's PINs are random per run and recorded in the truth file: no report file may hold them.
leak=$(run python3 -c '
import json, pathlib, sys
pins = [p for p in json.loads(pathlib.Path("/traces/smoke.log.truth.json").read_text()).get("pins", {}).values() if p]
hits = [f"{f.name}" for f in pathlib.Path("/reports").rglob("*") if f.is_file() and any(p.encode() in f.read_bytes() for p in pins)]
print(len(pins), *hits)
sys.exit(1 if hits or not pins else 0)
') || fail "PIN check: expected PINs in the truth file and none in the reports; got: $leak"
info "no report file holds the lab's PINs (${leak%% *} PINs checked)"

# --- 7. size ------------------------------------------------------------------------------------
step "7/7 image size"
size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -n1)
bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE" 2>/dev/null || echo '?')
base_size=$(buildah images --format '{{.Size}}' "$BASE" | head -n1)
info "$IMAGE: $size ($bytes bytes); base $BASE: $base_size"
budget=${P11LENS_MAX_IMAGE_MB:-400}
case $bytes in
    ''|*[!0-9]*) info "size budget ${budget} MB: not checked (no byte count)" ;;
    *) [ "$bytes" -le $(( budget * 1000 * 1000 )) ] || fail "the image is $size, over the ${budget} MB budget (P11LENS_MAX_IMAGE_MB)"
       info "within the ${budget} MB budget" ;;
esac
printf '\ncheck.sh: PASS: image %s built, default command wrote the smoke reports to %s/reports\n' "$IMAGE" "$out"
