"""The lab: where the PKCS#11 libraries are, an isolated token store, and the spy's environment.

Every drive runs against its own token store, so a run never touches the machine's real
tokens (``/var/lib/softhsm``) and two runs never see each other's keys.  The PINs are random
per lab: they are the strings tests look for to prove that no output leaks them.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError, P11lensError

log = logging.getLogger(__name__)

INSTALL_HINT = "install them with: apt-get install softhsm2 opensc"

# Debian/Ubuntu first (multiarch), then Fedora/RHEL, Arch, Alpine, Homebrew, /usr/local builds.
SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/*/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
SPY_CANDIDATES = (
    "/usr/lib/*/pkcs11-spy.so",
    "/usr/lib/*/pkcs11/pkcs11-spy.so",
    "/usr/lib64/pkcs11-spy.so",
    "/usr/lib64/pkcs11/pkcs11-spy.so",
    "/usr/lib/pkcs11-spy.so",
    "/usr/lib/pkcs11/pkcs11-spy.so",
    "/usr/local/lib/pkcs11-spy.so",
    "/usr/local/lib/pkcs11/pkcs11-spy.so",
    "/opt/homebrew/lib/pkcs11-spy.so",
)

TOKEN_LABEL = "p11lens-lab"


def _first_existing(patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        for hit in sorted(glob.glob(pattern)):
            if os.path.isfile(hit):
                return Path(hit)
    return None


def check_pkcs11_library(path: str | os.PathLike, role: str) -> Path:
    """Fail early, in one line, on a path that is not a loadable PKCS#11 library.

    The workload runs in a child process; catching a bad path here keeps the user's error a
    clean exit 2 instead of a child's traceback.  ``ctypes`` only maps the library: it calls no
    PKCS#11 function, so the token store is untouched.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{role} {str(p)!r}: no such file")
    try:
        handle = ctypes.CDLL(str(p.resolve()))
    except OSError as exc:
        raise InputError(f"{role} {str(p)!r} cannot be loaded: {exc}") from None
    if not hasattr(handle, "C_GetFunctionList"):
        raise InputError(f"{role} {str(p)!r} is not a PKCS#11 library (no C_GetFunctionList)")
    return p


def find_module(explicit: str | None) -> Path:
    """The real PKCS#11 module: ``--module`` if given, else SoftHSM2 from the usual places."""
    if explicit:
        return check_pkcs11_library(explicit, "--module")
    found = _first_existing(SOFTHSM_CANDIDATES)
    if found is None:
        raise P11lensError(f"SoftHSM2 (libsofthsm2.so) not found; {INSTALL_HINT} (or pass --module)")
    return check_pkcs11_library(found, "SoftHSM2")


def find_spy(explicit: str | None) -> Path:
    """OpenSC's pkcs11-spy: ``--spy`` if given, else the usual distribution paths."""
    if explicit:
        return check_pkcs11_library(explicit, "--spy")
    found = _first_existing(SPY_CANDIDATES)
    if found is None:
        raise P11lensError(f"OpenSC pkcs11-spy.so not found; {INSTALL_HINT} (or pass --spy)")
    return check_pkcs11_library(found, "pkcs11-spy")


def is_softhsm(module: Path) -> bool:
    return "softhsm" in module.name.lower()


@dataclass(frozen=True)
class Lab:
    """An initialized token and everything a child process needs to reach it through the spy."""

    root: Path
    module: Path
    spy: Path
    softhsm_conf: Path | None  # None when --module is not SoftHSM2 (its own config applies)
    token_label: str
    so_pin: str
    user_pin: str

    def spy_env(self, trace: Path) -> dict[str, str]:
        """The variables the spy reads when it is loaded; they must be set before the load."""
        env = {"PKCS11SPY": str(self.module), "PKCS11SPY_OUTPUT": str(trace)}
        if self.softhsm_conf is not None:
            env["SOFTHSM2_CONF"] = str(self.softhsm_conf)
        return env


def _random_pin(prefix: str) -> str:
    """Distinctive PINs (no digit run that could occur by chance in a Parquet file)."""
    return f"{prefix}{secrets.token_hex(8)}"


def write_softhsm_conf(root: Path) -> Path:
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    return conf


def _run_tool(argv: list[str], env: dict[str, str], what: str) -> None:
    """Run a token-setup tool; its output can hold PINs, so it is kept out of our messages."""
    tool = shutil.which(argv[0])
    if tool is None:
        raise P11lensError(f"{argv[0]} not found; {INSTALL_HINT}")
    proc = subprocess.run([tool, *argv[1:]], env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise P11lensError(f"{what} failed ({argv[0]} exit {proc.returncode}): {_last_line(proc.stderr or proc.stdout)}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def init_token_softhsm(conf: Path, label: str, so_pin: str, user_pin: str) -> None:
    """softhsm2-util sets SO and user PIN in one step on the first free slot."""
    argv = ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin]
    _run_tool(argv, {"SOFTHSM2_CONF": str(conf)}, "token initialization")


def init_token_generic(module: Path, label: str, so_pin: str, user_pin: str, env: dict[str, str]) -> None:
    """Any other module: OpenSC's pkcs11-tool does C_InitToken on the first slot, then C_InitPIN."""
    base = ["pkcs11-tool", "--module", str(module)]
    _run_tool([*base, "--init-token", "--label", label, "--so-pin", so_pin], env, "C_InitToken")
    _run_tool([*base, "--token-label", label, "--login", "--login-type", "so", "--so-pin", so_pin,
               "--init-pin", "--pin", user_pin], env, "C_InitPIN")


def create_lab(root: Path, module: Path, spy: Path, token_init: str = "auto") -> Lab:
    """Make the store and initialize a token; ``token_init`` is auto, softhsm2-util or pkcs11-tool."""
    root.mkdir(parents=True, exist_ok=True)
    so_pin, user_pin = _random_pin("so-"), _random_pin("user-")
    conf = write_softhsm_conf(root) if is_softhsm(module) else None
    method = token_init if token_init != "auto" else ("softhsm2-util" if conf else "pkcs11-tool")
    if method == "softhsm2-util":
        if conf is None:
            raise InputError("--token-init softhsm2-util needs a SoftHSM2 --module")
        init_token_softhsm(conf, TOKEN_LABEL, so_pin, user_pin)
    else:
        init_token_generic(module, TOKEN_LABEL, so_pin, user_pin, {"SOFTHSM2_CONF": str(conf)} if conf else {})
    log.info("lab ready in %s (module %s, token %r, via %s)", root, module, TOKEN_LABEL, method)
    return Lab(root, module, spy, conf, TOKEN_LABEL, so_pin, user_pin)
