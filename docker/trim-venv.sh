#!/bin/sh
# docker/trim-venv.sh VENV: drop from the image's venv what p11lens never loads, strip what can be
# stripped (run by docker/Dockerfile's builder stage; docker/verify-venv.py then proves that what
# p11lens uses still loads and works, so a bad trim fails the build, not a user's run).
#
# What goes, and why it is safe for p11lens (which writes Parquet, SVG charts and text):
#   - symbol tables of native libraries (strip --strip-unneeded), except those patchelf rewrote
#     when their wheel was repaired (in a *.libs folder, or with an RPATH into one): strip breaks
#     those ("ELF load command address/offset not page-aligned");
#   - pyarrow: Arrow Flight and S3 (only their own modules link them; pyarrow.fs imports S3 in a
#     try), the C++ test module, headers, Cython sources, test suite; copies of one library under
#     several names become links to the one its SONAME names;
#   - fontTools beyond what matplotlib imports for SVG/Agg output (fontTools.agl, fontTools.misc):
#     its subsetter, compilers and font builders serve matplotlib's PDF and PS backends only;
#   - matplotlib's and numpy's test suites, numpy's f2py and distutils, matplotlib's sample data,
#     the GUI backends' web assets;
#   - Pillow's plugins that matplotlib never uses (AVIF, WebP, FreeType, LittleCMS), then every
#     bundled library (*.libs) that no remaining module needs;
#   - numpy's test-only extension modules; matplotlib's serif, display and STIX fonts;
#   - type stubs (*.pyi), console scripts of the trimmed tools;
#   - the dependencies' Python sources: their modules stay as byte code (.pyc in the .py's place).
set -eu

venv=${1:?usage: trim-venv.sh VENV}
sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
before=$(du -sk "$venv" | cut -f1)

# --- pyarrow ------------------------------------------------------------------------------------
pa=$sp/pyarrow
rm -rf "$pa"/tests "$pa"/include "$pa"/src \
       "$pa"/_flight*.so "$pa"/flight.py "$pa"/libarrow_flight.so* "$pa"/libarrow_python_flight.so* \
       "$pa"/_s3fs*.so "$pa"/libarrow_s3.so* \
       "$pa"/_pyarrow_cpp_tests*.so
find "$sp" \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -delete
# libX.so, libX.so.N and libX.so.N.M.P ship as three identical files: keep the SONAME one.
for lib in "$pa"/lib*.so; do
    [ -f "$lib" ] && [ ! -L "$lib" ] || continue
    soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
    [ -n "$soname" ] && [ -f "$pa/$soname" ] || continue
    for copy in "$lib" "$lib".*; do
        [ -f "$copy" ] && [ ! -L "$copy" ] && [ "$(basename "$copy")" != "$soname" ] || continue
        cmp -s "$copy" "$pa/$soname" && ln -sf "$soname" "$copy"
    done
done

# --- fontTools: keep the package root, fontTools.agl and fontTools.misc ---------------------------
ft=$sp/fontTools
if [ -d "$ft" ]; then
    find "$ft" -mindepth 1 -maxdepth 1 \
        ! -name __init__.py ! -name agl.py ! -name misc ! -name config ! -name __pycache__ \
        -exec rm -rf {} +
    find "$ft/__pycache__" -type f ! -name '__init__.*' ! -name 'agl.*' -delete 2>/dev/null || true
fi

# --- matplotlib, numpy: tests, tools, data p11lens never reads ------------------------------------
find "$sp/numpy" "$sp/matplotlib" "$sp/mpl_toolkits" -depth -type d -name tests -exec rm -rf {} + 2>/dev/null || true
rm -rf "$sp"/numpy/f2py "$sp"/numpy/distutils "$sp"/numpy/_pyinstaller \
       "$sp"/numpy/_core/_simd.*.so "$sp"/numpy/_core/_multiarray_tests.*.so "$sp"/numpy/_core/_umath_tests.*.so \
       "$sp"/numpy/_core/_rational_tests.*.so "$sp"/numpy/_core/_struct_ufunc_tests.*.so \
       "$sp"/numpy/_core/_operand_flag_tests.*.so \
       "$sp"/matplotlib/mpl-data/sample_data "$sp"/matplotlib/backends/web_backend \
       "$sp"/matplotlib/backends/_tkagg*.so
# Fonts: the charts use DejaVu Sans (and mathtext its Computer Modern fallback); the serif,
# display and STIX families go.
rm -f "$sp"/matplotlib/mpl-data/fonts/ttf/DejaVuSerif*.ttf "$sp"/matplotlib/mpl-data/fonts/ttf/DejaVuSansDisplay.ttf \
      "$sp"/matplotlib/mpl-data/fonts/ttf/STIX*.ttf

# --- Pillow: the plugins matplotlib does not use ------------------------------------------------
rm -f "$sp"/PIL/_avif*.so "$sp"/PIL/_webp*.so "$sp"/PIL/_imagingft*.so "$sp"/PIL/_imagingcms*.so

# --- bundled libraries nothing needs any more -------------------------------------------------
# The closure of DT_NEEDED over every remaining module and library outside the *.libs folders.
needed=$(mktemp)
find "$sp" \( -name '*.so' -o -name '*.so.*' \) -type f ! -path '*.libs/*' \
    -exec readelf -d {} + 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort -u > "$needed"
while :; do
    n=$(wc -l < "$needed")
    for lib in "$sp"/*.libs/*; do
        grep -qxF "$(basename "$lib")" "$needed" && readelf -d "$lib" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'
    done | sort -u - "$needed" -o "$needed"
    [ "$(wc -l < "$needed")" -eq "$n" ] && break
done
for lib in "$sp"/*.libs/*; do
    grep -qxF "$(basename "$lib")" "$needed" || rm -f "$lib"
done
rm -f "$needed"

# --- stubs, console scripts of what went ----------------------------------------------------------
find "$sp" -name '*.pyi' -delete
rm -f "$venv"/bin/f2py "$venv"/bin/numpy-config "$venv"/bin/fonttools "$venv"/bin/pyftmerge \
      "$venv"/bin/pyftsubset "$venv"/bin/ttx "$venv"/bin/Activate.ps1 "$venv"/bin/activate.csh "$venv"/bin/activate.fish

# --- strip -----------------------------------------------------------------------------------------
find "$sp" \( -name '*.so' -o -name '*.so.*' \) -type f ! -path '*.libs/*' | while read -r so; do
    readelf -d "$so" 2>/dev/null | grep -E 'R(UN)?PATH' | grep -q '\.libs' && continue
    strip --strip-unneeded "$so"
done

# --- byte code only for the dependencies ---------------------------------------------------------
# Each dependency's modules become sourceless .pyc files where the .py was (Python imports those
# without the source; a traceback through them names file and line, without the line's text).
# p11lens's own packages keep their sources.
own=" pipeline grammars reports "
for pkg in "$sp"/*; do
    [ -d "$pkg" ] || continue
    name=$(basename "$pkg")
    case $name in *.dist-info|__pycache__) continue ;; esac
    case $own in *" $name "*) continue ;; esac
    "$venv/bin/python" -m compileall -q -b -f "$pkg" >/dev/null || true
    find "$pkg" -name '*.py' -type f | while read -r py; do [ ! -f "${py}c" ] || rm -f "$py"; done
    find "$pkg" -depth -type d -name __pycache__ -exec rm -rf {} +
done
for mod in "$sp"/*.py; do
    [ -f "$mod" ] || continue
    "$venv/bin/python" -m compileall -q -b -f "$mod" >/dev/null && rm -f "$mod"
done
rm -rf "$sp"/__pycache__

echo "trim-venv: $venv $((before / 1024)) MiB -> $(( $(du -sk "$venv" | cut -f1) / 1024 )) MiB"
