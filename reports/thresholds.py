"""``--fail-on`` specs: a tiny, pure grammar for "exit 1 when this got worse".

    p95=+20%            any function's p95 latency rose by more than 20 % (and by more than 1 ms)
    p99@C_Sign=+5ms     C_Sign's p99 rose by more than 5 ms
    errors=+0           more error returns than the baseline (any increase)
    errors=+10%         error returns rose by more than 10 %
    error_rate=+0.5pp   the error rate rose by more than half a percentage point
    leaked=+0           more sessions left open than the baseline
    findings=high       a finding of severity high (or worse) that the baseline did not have
    findings=medium     ... of severity medium or worse
    rv=new              a non-OK return code (per function) that the baseline never returned

``parse_fail_on(text) -> Threshold`` raises `ThresholdError` (a `P11lensError`: one line,
exit 2) on anything else.  `Threshold` is a frozen dataclass; `str(threshold)` gives the
canonical spelling back.  Nothing here reads files, so the job scheduler can parse and check
its config's ``fail_on`` list with the same function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import P11lensError

MIN_SAMPLES = 5  # a latency percentile on fewer timed calls is noise: not held to a threshold (said loudly when it moved)

LATENCY_METRICS = ("p50", "p90", "p95", "p99", "max", "mean")
COUNT_METRICS = ("errors", "leaked")
RATE_METRICS = ("error_rate",)
SEVERITY_ORDER = ("info", "low", "medium", "high")  # ascending
METRICS = LATENCY_METRICS + COUNT_METRICS + RATE_METRICS + ("findings", "rv")

# what each metric accepts after '='
UNITS = {
    **{m: ("%", "ms") for m in LATENCY_METRICS},
    "errors": ("", "%"),
    "leaked": ("", "%"),
    "error_rate": ("pp", "%"),
}

_SPEC = re.compile(
    r"""^\s*(?P<metric>[a-z_0-9]+)
        (?:@(?P<func>[A-Za-z_][A-Za-z0-9_]*))?
        \s*=\s*
        (?P<value>\S+)\s*$""",
    re.X,
)
_AMOUNT = re.compile(r"^\+?(?P<num>\d+(?:\.\d+)?)(?P<unit>%|ms|pp)?$")


class ThresholdError(P11lensError):
    """A --fail-on spec that does not parse."""


@dataclass(frozen=True)
class Threshold:
    metric: str  # one of METRICS
    amount: float = 0.0  # the allowed increase (not used by findings / rv)
    unit: str = ""  # "" (count) | "%" (relative) | "ms" | "pp" (percentage points)
    func: str | None = None  # latency metrics: only this function
    severity: str | None = None  # findings: the least severity that fails

    def __str__(self) -> str:
        if self.metric == "findings":
            return f"findings={self.severity}"
        if self.metric == "rv":
            return "rv=new"
        scope = f"@{self.func}" if self.func else ""
        return f"{self.metric}{scope}=+{self.amount:g}{self.unit}"

    def crossed(self, base: float | None, cand: float | None) -> bool:
        """Whether going from ``base`` to ``cand`` exceeds the allowed increase.

        A relative (``%``) latency limit also needs an absolute rise of more than the spy's
        1 ms resolution, so that 0 → 1 ms (+∞ %) on a sub-millisecond call does not fail a run.
        """
        if cand is None:
            return False
        base = base or 0.0
        delta = cand - base
        if self.unit == "%":
            if self.metric in LATENCY_METRICS and delta <= 1.0:
                return False
            if base == 0:
                return delta > 0
            return delta / base * 100 > self.amount
        if self.unit == "pp":
            return delta * 100 > self.amount + 1e-12
        return delta > self.amount


def parse_fail_on(text: str) -> Threshold:
    """Parse one ``--fail-on`` spec (see the module doc); raise `ThresholdError` if invalid."""
    m = _SPEC.match(text or "")
    if not m:
        raise ThresholdError(f"--fail-on {text!r}: expected METRIC=LIMIT, e.g. p95=+20%, errors=+0, findings=high")
    metric, func, value = m.group("metric").lower(), m.group("func"), m.group("value")
    if metric not in METRICS:
        raise ThresholdError(f"--fail-on {text!r}: unknown metric {metric!r} (one of: {', '.join(METRICS)})")
    if func and metric not in LATENCY_METRICS:
        raise ThresholdError(f"--fail-on {text!r}: @FUNCTION applies to latency metrics only ({', '.join(LATENCY_METRICS)})")
    if metric == "findings":
        severity = value.lower()
        if severity not in SEVERITY_ORDER:
            raise ThresholdError(f"--fail-on {text!r}: findings= takes a severity ({', '.join(reversed(SEVERITY_ORDER))})")
        return Threshold("findings", severity=severity)
    if metric == "rv":
        if value.lower() != "new":
            raise ThresholdError(f"--fail-on {text!r}: rv= takes 'new' (fail on a return code the baseline never had)")
        return Threshold("rv")
    a = _AMOUNT.match(value)
    if not a:
        raise ThresholdError(f"--fail-on {text!r}: limit {value!r} is not an increase like +20%, +5ms, +0 or +0.5pp")
    unit = a.group("unit") or ""
    if unit not in UNITS[metric]:
        allowed = " or ".join(repr(u) if u else "a plain count" for u in UNITS[metric])
        raise ThresholdError(f"--fail-on {text!r}: {metric} takes {allowed}")
    return Threshold(metric, float(a.group("num")), unit, func)


def parse_fail_on_list(specs: list[str] | tuple[str, ...] | None) -> list[Threshold]:
    """Parse several specs; also accepts comma-separated ones (``p95=+20%,errors=+0``)."""
    out: list[Threshold] = []
    for spec in specs or ():
        for part in spec.split(","):
            if part.strip():
                out.append(parse_fail_on(part))
    return out


def severity_at_least(severity: str, floor: str) -> bool:
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    return rank.get(severity, -1) >= rank[floor]
