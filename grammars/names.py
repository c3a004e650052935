"""Names of mechanisms and user types that the spy printed as bare numbers.

The spy prints names, and we keep what it printed (stripped of its padding).  Where it printed a
bare number instead (an unknown mechanism or user type, e.g. ``0x00000252``), python-pkcs11's
enums give the name, so there is no hand-written table (the native engine's table is generated
from the same enums: ``scripts/gen_enums.py``).
"""

from __future__ import annotations

from pkcs11.constants import UserType
from pkcs11.mechanisms import Mechanism


def mechanism_name(text: str) -> str:
    """The mechanism as the spy named it; a bare ``0x...`` number gets python-pkcs11's name."""
    if text.startswith("0x"):
        return _enum_name(Mechanism, "CKM_", text[2:], text)
    if text.startswith("Unknown Mechanism ("):  # 0.22 C_GetMechanismInfo: "Unknown Mechanism (80001234)"
        return _enum_name(Mechanism, "CKM_", text[19:-1], "0x" + text[19:-1].upper())
    return text


def user_type_name(text: str) -> str:
    """The user type as printed; ``0x00000063``-style numbers (0.23+) get python-pkcs11's name."""
    if text.startswith("0x"):
        return _enum_name(UserType, "CKU_", text[2:], text)
    return text


def _enum_name(enum: type, prefix: str, digits: str, fallback: str) -> str:
    """The enum's name of hex ``digits``; ``fallback`` for an unknown value, or for digits a
    truncated log cut short (``0x``)."""
    try:
        return prefix + enum(int(digits, 16)).name
    except ValueError:
        return fallback
