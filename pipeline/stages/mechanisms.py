"""Mechanisms in use: calls, errors and latency per (mechanism, operation family).

Why: which algorithms an application really uses, how often they fail and what they cost is
what a migration (e.g. off RSA PKCS#1 v1.5 or SHA-1) or a capacity plan needs, and the raw
``mechanism`` column cannot answer it: only the Init call names the mechanism, so a C_Sign is
attributed to the mechanism of the latest C_SignInit on its session (``op_mechanism``).
``C_GetMechanismInfo`` queries are not uses and are left out.

``weakness`` / ``weakness_severity`` (added columns) say why a mechanism is deprecated or
weak *for that family*: RSA PKCS#1 v1.5 is fine for signatures but not for encryption;
SHA-1 matters for signatures, not for HMAC.

How: from the latency stage's counts per (function, mechanism, error or not, latency), so the
two agree and no per-call data is held.
"""

from __future__ import annotations

import polars as pl

from pipeline.stages.common import family_expr
from pipeline.stages.latency import quantile

COLUMNS = ["mechanism", "family", "calls", "errors", "with_latency", "p50_ms", "p95_ms", "weakness", "weakness_severity"]

_SHA1_SIG = ("CKM_SHA1_RSA_PKCS", "CKM_SHA1_RSA_PKCS_PSS", "CKM_SHA1_RSA_X9_31", "CKM_ECDSA_SHA1", "CKM_DSA_SHA1")
_OBSOLETE = ("CKM_RC2", "CKM_RC4", "CKM_RC5", "CKM_CAST", "CKM_IDEA", "CKM_SKIPJACK", "CKM_BATON", "CKM_JUNIPER")


def weakness(mechanism: str, family: str) -> tuple[str, str] | None:
    """(severity, reason) when ``mechanism`` is weak or deprecated for ``family``; else None."""
    m = mechanism
    if m.startswith(_OBSOLETE):
        return "high", "obsolete cipher"
    if m.startswith(("CKM_DES_", "CKM_DES_KEY_GEN")) or m in ("CKM_DES_ECB", "CKM_DES_CBC", "CKM_DES_CBC_PAD", "CKM_DES_MAC"):
        return "high", "single DES (56-bit key)"
    if m.startswith(("CKM_DES3", "CKM_DES2")):
        return "medium", "3DES (64-bit block; disallowed by NIST SP 800-131A after 2023)"
    if m.startswith(("CKM_MD5", "CKM_MD2")):
        return "medium", "MD5/MD2 (broken hash)"
    if m in _SHA1_SIG:
        return ("medium", "SHA-1 signature") if family == "sign" else ("low", "SHA-1 signature verification")
    if m == "CKM_RSA_X_509":
        return "medium", "raw RSA without padding"
    if m == "CKM_RSA_PKCS" and family in ("encrypt", "decrypt", "wrap", "unwrap"):
        return "medium", "RSA PKCS#1 v1.5 encryption (padding-oracle prone; use OAEP)"
    if m == "CKM_RSA_PKCS_KEY_PAIR_GEN":
        return None  # key size is judged by rsa-key-small
    if m.endswith("_ECB") and family in ("encrypt", "decrypt"):
        return "low", "ECB mode (no diffusion across blocks)"
    if m == "CKM_SHA_1" and family == "digest":
        return "low", "SHA-1 digest"
    return None


def weakness_table(pairs: pl.DataFrame) -> pl.DataFrame:
    """``weakness``, ``weakness_severity`` for distinct (mechanism, family) rows."""
    rows = []
    for mech, fam in pairs.select("mechanism", "family").unique().iter_rows():
        found = weakness(mech, fam) if mech is not None else None
        rows.append((mech, fam, found[1] if found else None, found[0] if found else None))
    return pl.DataFrame(
        rows,
        schema={"mechanism": pl.String, "family": pl.String, "weakness": pl.String, "weakness_severity": pl.String},
        orient="row",
    )


def mechanism_uses(calls: pl.LazyFrame) -> pl.LazyFrame:
    """Calls (derived, or counts of them) that use a mechanism, with ``mechanism`` = the
    operation's and ``family`` ('other' if none)."""
    return (
        calls.filter(pl.col("op_mechanism").is_not_null() & (pl.col("func") != "C_GetMechanismInfo"))
        .with_columns(pl.col("op_mechanism").alias("mechanism"), family_expr().fill_null("other").alias("family"))
    )


def mechanisms(counts: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (mechanism, family); ``counts``: the combined ``latency.latency_counts`` summary."""
    n = pl.col("n")
    per = (
        mechanism_uses(counts)
        .group_by("mechanism", "family")
        .agg(
            n.sum().cast(pl.Int64).alias("calls"),
            n.filter(pl.col("error")).sum().cast(pl.Int64).alias("errors"),
            n.filter(pl.col("latency_ms").is_not_null()).sum().cast(pl.Int64).alias("with_latency"),
            quantile(0.5).alias("p50_ms"),
            quantile(0.95).alias("p95_ms"),
        )
        .collect()
    )
    return (
        per.join(weakness_table(per), on=["mechanism", "family"], how="left", nulls_equal=True)
        .select(COLUMNS)
        .sort(["calls", "mechanism", "family"], descending=[True, False, False])
        .lazy()
    )
