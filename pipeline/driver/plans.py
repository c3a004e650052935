"""Seeded operation plans: what each workload will do, decided before anything runs.

A plan is plain data (lists of dicts), made only from the seed and the sizes.  So the same
``--seed`` gives the same operations, whatever the token answers, and a plan can be compared in a
test without a token.  The planner simulates just enough state (open sessions, live keys,
signatures and ciphertexts made earlier, the login) to only plan operations that make sense,
except where the ``errors`` workload wants them not to.

Step shape: ``{"id": "p0t1.17", "op": "sign", ...arguments...}``; optional ``"expect"`` (the
CKR name the operation must end with) and ``"fail_at"`` (the call that returns it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

WORKLOADS = ("smoke", "mixed", "errors", "threads", "processes")

KEY_LIMITS = {"aes": 4, "rsa": 3, "ec": 3, "hmac": 2}
KEY_BITS = {"aes": (128, 256), "rsa": (1024,), "ec": (256,), "hmac": (256,)}
SIGN_MECHS = {"rsa": ("SHA256_RSA_PKCS", "SHA256_RSA_PKCS_PSS"), "ec": ("ECDSA",), "hmac": ("SHA256_HMAC",)}
MULTIPART_SIGN = {"SHA256_RSA_PKCS", "SHA256_RSA_PKCS_PSS", "SHA256_HMAC"}
CIPHER_MECHS = ("AES_CBC_PAD", "AES_GCM", "AES_CTR")
DIGEST_MECHS = ("SHA256", "SHA512")
MAX_POOL = 4
MAX_DATA = 200


@dataclass
class Planner:
    """Builds one thread's step list and tracks the state the next choice depends on."""

    rng: random.Random
    prefix: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    counter: int = 0

    def add(self, op: str, **args: Any) -> str:
        step_id = f"{self.prefix}.{len(self.steps)}"
        self.steps.append({"id": step_id, "op": op, **args})
        return step_id

    def new_id(self, letter: str) -> str:
        self.counter += 1
        return f"{self.prefix}{letter}{self.counter}"

    # -- state queries -------------------------------------------------------------------------
    def open_sessions(self) -> list[str]:
        return [sid for sid, s in self.sessions.items() if s["open"]]

    def alive(self, *kinds: str) -> list[str]:
        return [k for k, v in self.keys.items() if v["alive"] and v["kind"] in kinds]

    def usable_outputs(self, kind: str) -> list[str]:
        return [o for o, v in self.outputs.items() if v["kind"] == kind and self.keys[v["key"]]["alive"]]

    # -- steps that change state -----------------------------------------------------------------
    def open_session(self, rw: bool, sid: str | None = None) -> str:
        sid = sid or self.new_id("s")
        self.sessions[sid] = {"rw": rw, "open": True}
        self.add("open_session", session=sid, rw=rw)
        return sid

    def close_session(self, sid: str, **extra: Any) -> None:
        self.sessions[sid]["open"] = False
        for key in self.keys.values():
            # session objects die with their session; token objects live on in the token, but
            # python-pkcs11's handle objects are bound to the session that made them
            if key["session"] == sid:
                key["alive"] = False
        self.add("close_session", session=sid, **extra)

    def gen_key(self, kind: str, sid: str, store: bool = False, **extra: Any) -> str:
        kid = self.new_id("k")
        bits = self.rng.choice(KEY_BITS[kind])
        if not extra.get("expect"):
            self.keys[kid] = {"kind": kind, "session": sid, "store": store, "alive": True, "label": kid}
        self.add("gen_key", session=sid, key=kid, kind=kind, bits=bits, store=store, label=kid, **extra)
        return kid

    def data_args(self, mech: str, parts: int = 1) -> dict[str, Any]:
        """Input size and seed; at least one byte per part, so ``parts`` Update calls happen."""
        length = 32 if mech == "ECDSA" else self.rng.randint(parts, MAX_DATA)
        return {"data_len": length, "data_seed": self.rng.getrandbits(32)}

    def sign(self, kid: str, mech: str | None = None, parts: int | None = None, **extra: Any) -> str:
        kind = self.keys[kid]["kind"]
        mech = mech or self.rng.choice(SIGN_MECHS[kind])
        if parts is None:
            parts = self.rng.choice((1, 1, 1, 2, 3)) if mech in MULTIPART_SIGN else 1
        step = self.add("sign", key=kid, mech=mech, parts=parts, **{**self.data_args(mech, parts), **extra})
        if not extra.get("expect"):
            self.outputs[step] = {"kind": "sig", "key": kid}
        return step

    def encrypt(self, kid: str, mech: str | None = None, parts: int | None = None, **extra: Any) -> str:
        mech = mech or self.rng.choice(CIPHER_MECHS)
        if parts is None:
            parts = self.rng.choice((1, 1, 2, 3)) if mech == "AES_CBC_PAD" else 1
        step = self.add("encrypt", key=kid, mech=mech, parts=parts, **{**self.data_args(mech, parts), **extra})
        if not extra.get("expect"):
            self.outputs[step] = {"kind": "ct", "key": kid}
        return step

    def destroy(self, kid: str) -> None:
        self.keys[kid]["alive"] = False
        self.add("destroy", key=kid)

    # -- the random mix ------------------------------------------------------------------------
    def candidates(self, pool: bool) -> list[tuple[int, Any]]:
        """(weight, action) pairs for every operation that makes sense in the current state."""
        sessions = self.open_sessions()
        out: list[tuple[int, Any]] = []
        for kind, limit in KEY_LIMITS.items():
            have = len(self.alive(kind))
            if have < limit:
                out.append((6 if have == 0 else 2, lambda k=kind: self._gen_random(k)))
        signers = self.alive("rsa", "ec", "hmac")
        if signers:
            out.append((10, lambda: self.sign(self.rng.choice(signers))))
        if self.usable_outputs("sig"):
            out.append((8, lambda: self.add("verify", of=self.rng.choice(self.usable_outputs("sig")))))
        if self.alive("aes"):
            out.append((10, lambda: self.encrypt(self.rng.choice(self.alive("aes")))))
        if self.usable_outputs("ct"):
            out.append((8, lambda: self.add("decrypt", of=self.rng.choice(self.usable_outputs("ct")))))
        out.append((7, lambda: self._digest(self.rng.choice(sessions))))
        out.append((3, lambda: self.add("random", session=self.rng.choice(sessions), n=self.rng.choice((16, 32, 64)))))
        out.append((4, lambda: self._find(self.rng.choice(sessions))))
        live = self.alive(*KEY_LIMITS)
        if live:
            out.append((5, lambda: self.add("get_attr", key=self.rng.choice(live), attr="LABEL")))
            out.append((3, lambda: self._relabel(self.rng.choice(live))))
        spare = [k for k in live if len(self.alive(self.keys[k]["kind"])) >= 2]
        if spare:
            out.append((3, lambda: self.destroy(self.rng.choice(spare))))
        if pool and len(sessions) < MAX_POOL:
            out.append((1, lambda: self.open_session(self.rng.random() < 0.5)))
        closable = sessions[1:]  # the first session stays open: it keeps the token logged in
        if pool and closable:
            out.append((1, lambda: self.close_session(self.rng.choice(closable))))
        return out

    def _gen_random(self, kind: str) -> None:
        sid = self.rng.choice(self.open_sessions())
        store = kind == "aes" and self.sessions[sid]["rw"] and self.rng.random() < 0.25
        self.gen_key(kind, sid, store=store)

    def _digest(self, sid: str) -> None:
        mech = self.rng.choice(DIGEST_MECHS)
        parts = self.rng.choice((1, 1, 2, 3))
        self.add("digest", session=sid, mech=mech, parts=parts, **self.data_args(mech, parts))

    def _find(self, sid: str) -> None:
        live = self.alive(*KEY_LIMITS)
        if live and self.rng.random() < 0.6:
            self.add("find", session=sid, label=self.keys[self.rng.choice(live)]["label"])
        else:
            self.add("find", session=sid, object_class=self.rng.choice(("SECRET_KEY", "PRIVATE_KEY", "PUBLIC_KEY")))

    def _relabel(self, kid: str) -> None:
        label = f"{kid}-r{self.rng.randint(0, 999)}"
        self.keys[kid]["label"] = label
        self.add("set_attr", key=kid, attr="LABEL", value=label)

    def random_ops(self, n: int, pool: bool) -> None:
        for _ in range(n):
            choices = self.candidates(pool)
            total = sum(w for w, _ in choices)
            pick = self.rng.uniform(0, total)
            for weight, action in choices:
                pick -= weight
                if pick <= 0:
                    break
            action()


def _rng(seed: int, scope: str) -> random.Random:
    return random.Random(f"p11lens:{seed}:{scope}")


def process_plan(setup: list, workers: list, teardown: list) -> dict[str, Any]:
    return {"setup": setup, "workers": workers, "teardown": teardown}


def plan_smoke(seed: int, ops: int) -> list[dict[str, Any]]:
    """The fixed tour: every basic call once (``--ops`` does not apply)."""
    p = Planner(_rng(seed, "smoke"), "p0")
    p.add("load")
    p.add("get_token")
    sid = p.open_session(rw=True)
    p.add("login", session=sid, user="CKU_USER", pin="user")
    aes = p.gen_key("aes", sid)
    rsa = p.gen_key("rsa", sid)
    p.add("verify", of=p.sign(rsa, mech="SHA256_RSA_PKCS", parts=1))
    p.add("decrypt", of=p.encrypt(aes, mech="AES_CBC_PAD", parts=1))
    p.add("digest", session=sid, mech="SHA256", parts=1, **p.data_args("SHA256"))
    p.add("logout", session=sid)
    p.close_session(sid)
    p.add("finalize")
    return [process_plan(p.steps, [], [])]


def plan_mixed(seed: int, ops: int, scope: str = "p0") -> dict[str, Any]:
    """A random mix over a pool of sessions, logged in once, everything closed at the end."""
    p = Planner(_rng(seed, scope), scope)
    p.add("load")
    p.add("get_token")
    first = p.open_session(rw=True)
    p.add("login", session=first, user="CKU_USER", pin="user")
    p.open_session(rw=False)
    p.open_session(rw=True)
    p.random_ops(ops, pool=True)
    p.add("logout", session=first)
    for sid in p.open_sessions():
        p.close_session(sid)
    p.add("finalize")
    return process_plan(p.steps, [], [])


def plan_threads(seed: int, ops: int, threads: int) -> list[dict[str, Any]]:
    """Main thread logs in; each worker thread works in its own session; main tears down."""
    main = Planner(_rng(seed, "main"), "p0")
    main.add("load")
    main.add("get_token")
    first = main.open_session(rw=True)
    main.add("login", session=first, user="CKU_USER", pin="user")
    workers = []
    for t in range(threads):
        w = Planner(_rng(seed, f"t{t + 1}"), f"p0t{t + 1}")
        sid = w.open_session(rw=True)
        w.random_ops(max(1, ops // threads), pool=False)
        w.close_session(sid)
        workers.append(w.steps)
    tail = Planner(_rng(seed, "tail"), "p0z")
    tail.add("logout", session=first)
    tail.add("close_session", session=first)
    tail.add("finalize")
    return [process_plan(main.steps, workers, tail.steps)]


def plan_processes(seed: int, ops: int, processes: int) -> list[dict[str, Any]]:
    """Each process runs its own small mix (its own seed scope) into the shared trace."""
    return [plan_mixed(seed, max(1, ops // processes), scope=f"p{i}") for i in range(processes)]


def plan_errors(seed: int, ops: int) -> list[dict[str, Any]]:
    """Provoked failures with known return codes, then sessions and a login left behind."""
    p = Planner(_rng(seed, "errors"), "p0")
    p.add("load")
    p.add("get_token")
    rw = p.open_session(rw=True)
    for _ in range(3):  # repeated PIN failures, as a guessing client makes them
        p.add("login", session=rw, user="CKU_USER", pin="wrong", expect="CKR_PIN_INCORRECT")
    p.add("login", session=rw, user="CKU_USER", pin="user")
    p.add("login", session=rw, user="CKU_USER", pin="user", expect="CKR_USER_ALREADY_LOGGED_IN")
    p.add("login", session=rw, user="CKU_SO", pin="so", expect="CKR_USER_ANOTHER_ALREADY_LOGGED_IN")
    ro = p.open_session(rw=False)
    p.gen_key("aes", ro, store=True, expect="CKR_SESSION_READ_ONLY", fail_at="C_GenerateKey")
    aes = p.gen_key("aes", rw)
    rsa = p.gen_key("rsa", rw)
    catalog = _error_catalog(p, rw, ro, aes, rsa)
    for make in catalog:
        make()
    for _ in range(max(0, ops - len(catalog))):
        p.rng.choice(catalog)()
    doomed = p.gen_key("aes", rw)
    p.encrypt(doomed, mech="AES_CBC_PAD", parts=1)  # python-pkcs11 caches the key type now, so next time
    p.destroy(doomed)  # it goes straight to C_EncryptInit with the dead handle
    # SoftHSM2 answers a dead key handle with CKR_OBJECT_HANDLE_INVALID (PKCS#11 suggests KEY_HANDLE_INVALID)
    p.encrypt(doomed, mech="AES_CBC_PAD", parts=1, expect="CKR_OBJECT_HANDLE_INVALID", fail_at="C_EncryptInit")
    p.add("get_attr", key=doomed, attr="LABEL", expect="CKR_OBJECT_HANDLE_INVALID", fail_at="C_GetAttributeValue")
    gone = p.open_session(rw=False)
    p.close_session(gone)
    p.add("random", session=gone, n=16, expect="CKR_SESSION_HANDLE_INVALID", fail_at="C_GenerateRandom")
    p.open_session(rw=True)  # left open, never used
    # no logout and no C_CloseSession for rw, ro and the last one: the module's C_Finalize cleans up
    p.add("finalize")
    return [process_plan(p.steps, [], [])]


def _error_catalog(p: Planner, rw: str, ro: str, aes: str, rsa: str) -> list:
    """Repeatable provocations; each keeps the session usable for the next one."""
    return [
        lambda: p.encrypt(aes, mech="AES_OFB", parts=1, expect="CKR_MECHANISM_INVALID", fail_at="C_EncryptInit"),
        lambda: p.encrypt(aes, mech="AES_CBC", parts=1, data_len=17, expect="CKR_DATA_LEN_RANGE", fail_at="C_Encrypt"),
        lambda: p.add("decrypt_raw", key=aes, mech="AES_CBC_PAD", data_len=17, data_seed=p.rng.getrandbits(32),
                      expect="CKR_ENCRYPTED_DATA_LEN_RANGE", fail_at="C_Decrypt"),
        lambda: p.add("verify", of=p.sign(rsa, mech="SHA256_RSA_PKCS", parts=1), corrupt="flip",
                      expect="CKR_SIGNATURE_INVALID", fail_at="C_Verify"),
        lambda: p.add("verify", of=p.sign(rsa, mech="SHA256_RSA_PKCS", parts=1), corrupt="truncate",
                      expect="CKR_SIGNATURE_LEN_RANGE", fail_at="C_Verify"),
        lambda: p.add("set_pin", session=rw, old="wrong", new="new", expect="CKR_PIN_INCORRECT", fail_at="C_SetPIN"),
        lambda: p.add("login", session=ro, user="CKU_USER", pin="wrong", expect="CKR_USER_ALREADY_LOGGED_IN"),
        lambda: p.sign(aes, mech="SHA256_HMAC", parts=1, expect="CKR_KEY_TYPE_INCONSISTENT", fail_at="C_SignInit"),
    ]


def make_plans(workload: str, seed: int, ops: int, threads: int, processes: int) -> list[dict[str, Any]]:
    """One process plan per process to start, in order."""
    if workload == "smoke":
        return plan_smoke(seed, ops)
    if workload == "mixed":
        return [plan_mixed(seed, ops)]
    if workload == "errors":
        return plan_errors(seed, ops)
    if workload == "threads":
        return plan_threads(seed, ops, threads)
    if workload == "processes":
        return plan_processes(seed, ops, processes)
    raise ValueError(f"unknown workload {workload!r}")
