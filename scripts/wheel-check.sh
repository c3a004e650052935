#!/usr/bin/env bash
# scripts/wheel-check.sh (`make wheel-check`): the shipped artefacts work without a Rust toolchain.
#
#   1. `maturin build --release` builds the wheel and `maturin sdist` the sdist (cargo present);
#   2. the wheel holds the compiled engine (pipeline/_native.abi3.so) and the Python packages, and
#      no Rust source;
#   3. a fresh venv installs the wheel (and its dependencies, binary wheels only: pip may build
#      nothing) and runs it, all under an environment with no toolchain: `env -i`, a PATH of
#      the venv, /usr/bin and /bin only, no CARGO_*/RUSTUP_* variables, and a check that cargo,
#      rustc, rustup and maturin are not found on that PATH; from a folder outside the repository,
#      so `pipeline` is the installed one:
#        p11lens --version                                   names the wheel's version
#        p11lens parse sample-logs/smoke.log -o OUT            (the native engine, the default)
#        rows of OUT/calls.parquet == grep -cE '^[0-9]+: (C_|SetOperationState)' smoke.log
#   4. the sdist builds into a wheel with cargo present (`pip wheel` from the .tar.gz, as a user
#      without a matching wheel would: pip fetches maturin, cargo the crates, and compiles them
#      cold), and that wheel holds the same files as the first one.
#
# Takes about 1.5 minutes here (2 cores) with native/target warm, 2 with it cold: not part of
# `make test`.
#
# Knobs: WHEEL_CHECK_DIR=DIR (work folder, kept; default a temp dir removed at the end),
#        PYTHON=python3 (the interpreter the venvs are made from).
# Any failure stops with "wheel-check: FAIL: <what>" and a non-zero exit.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
start=$(date +%s)

step() { printf '==> %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
info() { printf '    %s\n' "$*"; }
fail() { printf 'wheel-check: FAIL: %s\n' "$*" >&2; exit 1; }

if [ -n "${WHEEL_CHECK_DIR:-}" ]; then
    work=$WHEEL_CHECK_DIR
    rm -rf "$work"
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/p11lens-wheel-check.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
cd "$REPO"
pyexe=$(command -v "$PYTHON") || fail "no $PYTHON on PATH"
pyexe=$("$pyexe" -c 'import sys; print(sys.executable)')

# --- 1. build ---------------------------------------------------------------------------------
step "1/4 maturin build --release + maturin sdist"
command -v cargo >/dev/null || fail "cargo is not on PATH: building the wheel needs the Rust toolchain"
if "$pyexe" -m maturin --version >/dev/null 2>&1; then
    maturin=("$pyexe" -m maturin)
elif command -v maturin >/dev/null; then
    maturin=(maturin)
else
    info "no maturin here: installing it into a build venv"
    "$pyexe" -m venv "$work/build-venv"
    "$work/build-venv/bin/pip" install -q 'maturin>=1.5,<2'
    maturin=("$work/build-venv/bin/maturin")
fi
info "$("${maturin[@]}" --version); $(cargo --version)"
dist=$work/dist
"${maturin[@]}" build --release --quiet --interpreter "$pyexe" --out "$dist" >"$work/build.log" 2>&1 \
    || { tail -n 30 "$work/build.log" >&2; fail "maturin build --release failed (log: $work/build.log)"; }
"${maturin[@]}" sdist --out "$dist" >"$work/sdist.log" 2>&1 \
    || { tail -n 30 "$work/sdist.log" >&2; fail "maturin sdist failed (log: $work/sdist.log)"; }
wheels=("$dist"/p11lens-*.whl) sdists=("$dist"/p11lens-*.tar.gz)
[ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] || fail "expected one wheel in $dist, got: ${wheels[*]}"
[ ${#sdists[@]} -eq 1 ] && [ -f "${sdists[0]}" ] || fail "expected one sdist in $dist, got: ${sdists[*]}"
wheel=${wheels[0]} sdist=${sdists[0]}
info "wheel $(basename "$wheel") ($(du -h "$wheel" | cut -f1)); sdist $(basename "$sdist") ($(du -h "$sdist" | cut -f1))"

# --- 2. wheel contents ------------------------------------------------------------------------
step "2/4 wheel contents"
"$pyexe" - "$wheel" <<'EOF' || fail "the wheel's contents are wrong (above)"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["pipeline/__init__.py", "pipeline/cli/__init__.py", "pipeline/native.py", "grammars/__init__.py",
        "reports/render.py"]
missing = [n for n in need if n not in names]
native = [n for n in names if n.startswith("pipeline/_native") and n.endswith(".so")]
rust = [n for n in names if n.endswith((".rs", "Cargo.toml", "Cargo.lock"))]
templates = [n for n in names if n.startswith("reports/templates/")]
bad = [n for n in names if n.startswith(("tests/", "sample-logs/", "bench/", "docker/", "native/"))]
problems = ([f"missing {missing}"] if missing else []) + ([] if native else ["no pipeline/_native*.so"]) \
    + ([f"Rust sources {rust[:5]}"] if rust else []) + ([] if templates else ["no reports/templates/"]) \
    + ([f"unexpected {bad[:5]}"] if bad else [])
for p in problems:
    print("   ", p, file=sys.stderr)
print(f"    {len(names)} files; engine {native[0] if native else '-'}; {len(templates)} report templates")
sys.exit(1 if problems else 0)
EOF

# --- 3. fresh venv, no toolchain --------------------------------------------------------------
step "3/4 fresh venv without a Rust toolchain: install the wheel, run it"
venv=$work/venv
"$pyexe" -m venv "$venv"
clean_path=$venv/bin:/usr/bin:/bin
# Nothing of this shell's environment but what pip needs to reach its index (its config files
# are read as usual); HOME stays so pip's download cache is used.
keep=(HOME="$HOME" PATH="$clean_path" LANG=C.UTF-8 TMPDIR="$work")
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_CERT PIP_FIND_LINKS PIP_DEFAULT_TIMEOUT \
         http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY SSL_CERT_FILE; do
    [ -n "${!v:-}" ] && keep+=("$v=${!v}")
done
clean() { (cd "$work" && env -i "${keep[@]}" "$@"); }
found=$(clean bash -c 'for t in cargo rustc rustup maturin; do command -v "$t"; done; env | grep -E "^(CARGO|RUSTUP|RUSTC)" || true')
[ -z "$found" ] || fail "the clean environment still reaches a toolchain: $found"
info "PATH=$clean_path; cargo, rustc, rustup, maturin: not found; no CARGO_*/RUSTUP_* variables"
clean "$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary :all: "$wheel" \
    >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; fail "pip install of the wheel failed (log: $work/install.log)"; }
version=$(clean "$venv/bin/p11lens" --version) || fail "p11lens --version failed"
want=$(basename "$wheel" | cut -d- -f2)
[ "$version" = "p11lens $want" ] || fail "p11lens --version says '$version', the wheel is $want"
info "$version"
where=$(clean "$venv/bin/python" -c 'import pipeline._native as n, pipeline; print(n.__file__); print(pipeline.__file__)')
case $where in "$venv"/*) ;; *) fail "pipeline is not imported from the venv: $where" ;; esac
engine=${where%%$'\n'*}
libs=$(clean ldd "$engine") || fail "ldd $engine failed"
! grep -q 'not found' <<<"$libs" || fail "the engine links a library this machine lacks: $(grep 'not found' <<<"$libs")"
info "engine: $engine (links $(awk '$1 !~ /^\// {print $1}' <<<"$libs" | grep -v '^linux-vdso' | paste -sd' ' -))"
log=$REPO/sample-logs/smoke.log
out=$work/out
summary=$(clean "$venv/bin/p11lens" -q parse "$log" -o "$out") || fail "p11lens parse $log failed"
info "parse: $summary"
rows=$(clean "$venv/bin/python" -c 'import sys, pyarrow.parquet as pq; print(pq.read_metadata(sys.argv[1]).num_rows)' "$out/calls.parquet") \
    || fail "cannot read $out/calls.parquet"
calls=$(grep -cE '^[0-9]+: (C_|SetOperationState)' "$log")
[ "$rows" -eq "$calls" ] || fail "calls.parquet has $rows rows, the log has $calls calls"
info "calls.parquet: $rows rows = $calls calls in the log"

# --- 4. sdist ---------------------------------------------------------------------------------
step "4/4 the sdist builds a wheel (cargo present)"
sdist_out=$work/sdist-wheel
# In pip's own build folder, with a target dir of its own (no CARGO_TARGET_DIR): a cold build of
# the crates from the sdist's files alone, as on a user's machine.
env -u CARGO_TARGET_DIR "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$sdist_out" "$sdist" \
    >"$work/sdist-build.log" 2>&1 || { tail -n 30 "$work/sdist-build.log" >&2; fail "pip wheel of the sdist failed (log: $work/sdist-build.log)"; }
"$pyexe" - "$wheel" "$sdist_out"/p11lens-*.whl <<'EOF' || fail "the sdist's wheel differs from maturin build's (above)"
import sys, zipfile
a, b = (set(zipfile.ZipFile(p).namelist()) for p in sys.argv[1:3])
for n in sorted(a ^ b):
    print("    only in", "maturin build's" if n in a else "the sdist's", "wheel:", n, file=sys.stderr)
print(f"    {sys.argv[2].rsplit('/', 1)[-1]}: the same {len(b)} files")
sys.exit(1 if a != b else 0)
EOF

printf 'wheel-check: PASS in %ss\n' "$(( $(date +%s) - start ))"
