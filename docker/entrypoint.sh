#!/bin/bash
# Entrypoint of the p11lens image.
#
#   demo [WORKLOAD]      (the default command) drive WORKLOAD (default: $P11LENS_WORKLOAD, smoke)
#                        through pkcs11-spy against a fresh SoftHSM2 lab in /tokens/WORKLOAD,
#                        trace to /traces/WORKLOAD.log (+ .truth.json), then `p11lens run` on
#                        that trace into /reports (report.html, report.md, report.txt, *.parquet)
#   parse|analyze|report|run|drive ARGS...   the p11lens subcommand (`p11lens` prefix optional)
#   -h|--help|--version|-v...                 passed to p11lens
#   anything else                             executed as given (p11lens, pkcs11-tool, bash, ...)
#
# The folders can be moved with P11LENS_TOKENS, P11LENS_TRACES, P11LENS_REPORTS.
set -euo pipefail

TOKENS=${P11LENS_TOKENS:-/tokens}
TRACES=${P11LENS_TRACES:-/traces}
REPORTS=${P11LENS_REPORTS:-/reports}

die() { echo "p11lens-entrypoint: $*" >&2; exit 2; }

# A folder the demo writes to must exist and be writable by the uid we run as.  Bind-mounted host
# folders are the usual culprit: say how to fix it instead of failing deep inside Python.
need_writable() {
    local dir=$1
    mkdir -p "$dir" 2>/dev/null || true
    [ -d "$dir" ] || die "$dir does not exist and cannot be created"
    if ! { : > "$dir/.p11lens-write-test"; } 2>/dev/null; then
        die "$dir is not writable by uid $(id -u) gid $(id -g). For a bind-mounted host folder run" \
            "with your own ids (P11LENS_UID=\$(id -u) P11LENS_GID=\$(id -g) docker compose ... up)" \
            "or make it writable (chmod a+rwx on the host folder)."
    fi
    rm -f "$dir/.p11lens-write-test"
}

demo() {
    local workload=${1:-${P11LENS_WORKLOAD:-smoke}}
    case $workload in
        ''|*/*|.*) die "bad workload name: '$workload'" ;;
    esac
    need_writable "$TOKENS"
    need_writable "$TRACES"
    need_writable "$REPORTS"

    local lab=$TOKENS/$workload trace=$TRACES/$workload.log
    # Each demo starts clean: the lab's PINs are random per run (an old token could not be used
    # again), and the spy appends to its log, so an old trace would mix two runs.
    rm -rf -- "$lab"
    rm -f -- "$trace" "$trace.truth.json"

    echo "p11lens-entrypoint: driving workload '$workload' through pkcs11-spy (lab $lab) -> $trace" >&2
    p11lens drive --workload "$workload" --lab "$lab" -o "$trace"
    [ -s "$trace" ] || die "p11lens drive wrote no trace at $trace"

    echo "p11lens-entrypoint: p11lens run $trace -o $REPORTS" >&2
    p11lens run "$trace" -o "$REPORTS"

    echo "p11lens-entrypoint: done; reports in $REPORTS:" >&2
    ls -l "$REPORTS" >&2
}

cmd=${1:-demo}
case $cmd in
    demo)
        shift $(( $# > 0 ? 1 : 0 ))
        [ $# -le 1 ] || die "usage: demo [WORKLOAD]"
        demo "$@"
        ;;
    parse|analyze|report|run|drive|-*)
        exec p11lens "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
