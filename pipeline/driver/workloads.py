"""Carry out a plan against the spy with python-pkcs11 and record the truth of every step.

This runs inside the child process that loaded the spy (python-pkcs11 loads one library per
process and the spy reads its environment once).  Each step runs under ``OpLock``: a thread lock,
plus a file lock when several processes share the trace.  Inside the lock the driver notes the
trace's size before and after the step; because the spy flushes at every ``Returned:``, the bytes
the file grew by are exactly that step's records.  The lock is also what makes threads safe:
python-pkcs11 initializes the module without OS locking (``C_Initialize(NULL)``), and SoftHSM2 is
not safe to call concurrently then.

python-pkcs11 has no separate login call, so ``login``/``logout`` go straight to the spy's
exported ``C_Login``/``C_Logout`` through ctypes (same loaded library, so the same spy state);
sessions are opened without a PIN, and ``close()`` then issues only ``C_CloseSession``.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.driver.calls import expectation
from pipeline.driver.truth import CKR, AuthTruth, OpTruth, SessionTruth, now_pair, rv_json, rv_of_exception, wall_clock

log = logging.getLogger(__name__)

CKU = {"CKU_SO": 0, "CKU_USER": 1}


class OpLock:
    """Serializes steps across threads, and across processes when given a lock file."""

    def __init__(self, path: Path | None) -> None:
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600) if path else None

    def __enter__(self) -> "OpLock":
        self._thread_lock.acquire()
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


@dataclass
class KeyEntry:
    kind: str
    secret: Any = None  # AES / HMAC key object
    public: Any = None
    private: Any = None

    def signer(self) -> Any:
        return self.private if self.private is not None else self.secret

    def verifier(self) -> Any:
        return self.public if self.public is not None else self.secret

    def handles(self) -> list[int]:
        objs = (self.public, self.private) if self.secret is None else (self.secret,)
        return [int(o.handle) for o in objs if o is not None]


@dataclass
class Runner:
    """State of one process's run: the library, its sessions and keys, and the truth so far."""

    spy: Path
    trace: Path
    token_label: str
    pins: dict[str, str]
    process: int
    lock: OpLock
    lib: Any = None
    token: Any = None
    raw: Any = None
    sessions: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, KeyEntry] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: list[OpTruth] = field(default_factory=list)
    session_truth: dict[str, SessionTruth] = field(default_factory=dict)
    auth: list[AuthTruth] = field(default_factory=list)
    library: dict[str, str] = field(default_factory=dict)  # C_GetInfo of the module behind the spy
    pid: int = field(default_factory=os.getpid)

    # -- the step loop -------------------------------------------------------------------------
    def run_steps(self, steps: list[dict[str, Any]], thread: int) -> None:
        for n, step in enumerate(steps):
            self.run_step(step, thread, n)

    def run_step(self, step: dict[str, Any], thread: int, n: int) -> OpTruth:
        handler: Callable[[dict[str, Any], OpTruth], None] = getattr(self, "do_" + step["op"])
        with self.lock:
            op = OpTruth(index=len(self.ops), process=self.process, pid=self.pid, thread=thread,
                         tid=threading.get_native_id(), op=step["op"],
                         args={k: v for k, v in step.items() if k != "op"}, step=n)
            self._fill_expectation(op, step)
            start = self._trace_size()
            op.start_ns, op.wall_start_ns = now_pair()
            try:
                handler(step, op)
                got = CKR["CKR_OK"]
            except Exception as exc:  # a PKCS#11 error is data here, not a failure of the driver
                got = rv_of_exception(exc)
                if got is None:
                    op.error = f"{type(exc).__name__}: {exc}"
            op.end_ns, op.wall_end_ns = now_pair()
            op.trace_bytes = [start, self._trace_size()]
            self.ops.append(op)
        self._finish(op, got)
        return op

    def _fill_expectation(self, op: OpTruth, step: dict[str, Any]) -> None:
        exp = expectation(step, self._key_kind(step), self._parts(step))
        op.expected_calls, op.calls_exact, op.may_also_call = exp.calls, exp.exact, exp.may_also
        op.expected_rv = rv_json(CKR[step.get("expect", "CKR_OK")])

    def _finish(self, op: OpTruth, got: int | None) -> None:
        op.got_rv = rv_json(got)
        op.as_expected = op.error is None and got == op.expected_rv["value"]
        op.wall_start, op.wall_end = wall_clock(op.wall_start_ns), wall_clock(op.wall_end_ns)
        if not op.as_expected:
            log.warning("step %s (%s): expected %s, got %s%s", op.args.get("id"), op.op, op.expected_rv["name"],
                        op.got_rv["name"] if op.got_rv else "no PKCS#11 error", f" ({op.error})" if op.error else "")

    def _trace_size(self) -> int:
        try:
            return self.trace.stat().st_size
        except FileNotFoundError:
            return 0

    def _key_kind(self, step: dict[str, Any]) -> str | None:
        ref = step.get("key") or self.outputs.get(step.get("of", ""), {}).get("key_id")
        entry = self.keys.get(ref) if ref else None
        return entry.kind if entry else step.get("kind")

    def _parts(self, step: dict[str, Any]) -> int:
        if "of" in step:
            return self.outputs.get(step["of"], {}).get("parts", 1)
        return int(step.get("parts", 1))

    # -- library and sessions -----------------------------------------------------------------
    def do_load(self, step: dict[str, Any], op: OpTruth) -> None:
        import pkcs11

        self.lib = pkcs11.lib(str(self.spy))
        self.library = {"manufacturer": self.lib.manufacturer_id, "description": self.lib.library_description,
                        "version": ".".join(map(str, self.lib.library_version)),
                        "cryptoki": ".".join(map(str, self.lib.cryptoki_version))}
        self.raw = ctypes.CDLL(str(self.spy))  # same mapping: dlopen returns the loaded library
        for name in ("C_Login", "C_Logout"):
            getattr(self.raw, name).restype = ctypes.c_ulong
        self.raw.C_Login.argtypes = [ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong]
        self.raw.C_Logout.argtypes = [ctypes.c_ulong]

    def do_get_token(self, step: dict[str, Any], op: OpTruth) -> None:
        self.token = self.lib.get_token(token_label=self.token_label)

    def do_open_session(self, step: dict[str, Any], op: OpTruth) -> None:
        session = self.token.open(rw=bool(step["rw"]))
        sid = step["session"]
        self.sessions[sid] = session
        op.session, op.session_handle = sid, int(session.handle)
        self.session_truth[sid] = SessionTruth(id=sid, process=self.process, pid=self.pid, thread=op.thread,
                                               handle=int(session.handle), rw=bool(step["rw"]), opened_op=op.index)

    def do_close_session(self, step: dict[str, Any], op: OpTruth) -> None:
        session = self._session(step, op)
        session.close()
        truth = self.session_truth[step["session"]]
        truth.closed_op, truth.left_open = op.index, False

    def do_login(self, step: dict[str, Any], op: OpTruth) -> None:
        session = self._session(step, op)
        pin = self.pins[step["pin"]].encode()
        rv = self.raw.C_Login(int(session.handle), CKU[step["user"]], pin, len(pin))
        self.auth.append(AuthTruth(op.index, self.process, "C_Login", op.session_handle, step["user"], step["pin"], rv_json(rv)))
        _raise_rv(rv)

    def do_logout(self, step: dict[str, Any], op: OpTruth) -> None:
        session = self._session(step, op)
        rv = self.raw.C_Logout(int(session.handle))
        self.auth.append(AuthTruth(op.index, self.process, "C_Logout", op.session_handle, None, None, rv_json(rv)))
        _raise_rv(rv)

    def do_set_pin(self, step: dict[str, Any], op: OpTruth) -> None:
        self._session(step, op).set_pin(self.pins[step["old"]], self.pins[step["new"]])

    def do_finalize(self, step: dict[str, Any], op: OpTruth) -> None:
        self.lib.finalize()

    def _session(self, step: dict[str, Any], op: OpTruth) -> Any:
        sid = step["session"]
        session = self.sessions[sid]
        op.session, op.session_handle = sid, int(session.handle)
        return session

    # -- keys ----------------------------------------------------------------------------------
    def do_gen_key(self, step: dict[str, Any], op: OpTruth) -> None:
        from pkcs11 import Attribute, KeyType, MechanismFlag
        from pkcs11.util.ec import encode_named_curve_parameters

        session, kind = self._session(step, op), step["kind"]
        common = {"store": bool(step["store"]), "label": step["label"]}
        if kind == "aes":
            entry = KeyEntry(kind, secret=session.generate_key(KeyType.AES, step["bits"], **common))
        elif kind == "hmac":
            caps = MechanismFlag.SIGN | MechanismFlag.VERIFY
            entry = KeyEntry(kind, secret=session.generate_key(KeyType.GENERIC_SECRET, step["bits"], capabilities=caps, **common))
        elif kind == "rsa":
            pub, priv = session.generate_keypair(KeyType.RSA, step["bits"], **common)
            entry = KeyEntry(kind, public=pub, private=priv)
        else:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            pub, priv = params.generate_keypair(**common)
            entry = KeyEntry(kind, public=pub, private=priv)
        self.keys[step["key"]] = entry
        op.created = entry.handles()
        op.key_handles = list(op.created)

    def _key(self, step: dict[str, Any], op: OpTruth, key_id: str | None = None) -> KeyEntry:
        entry = self.keys[key_id or step["key"]]
        op.key_handles = entry.handles()
        obj = entry.secret if entry.secret is not None else entry.private
        op.session_handle = int(obj.session.handle)
        op.session = next((sid for sid, s in self.sessions.items() if s is obj.session), None)
        return entry

    def do_destroy(self, step: dict[str, Any], op: OpTruth) -> None:
        entry = self._key(step, op)
        for obj in (entry.private, entry.public, entry.secret):
            if obj is not None:
                obj.destroy()
                op.destroyed.append(int(obj.handle))

    def do_get_attr(self, step: dict[str, Any], op: OpTruth) -> None:
        from pkcs11 import Attribute

        self._key(step, op).signer()[Attribute[step["attr"]]]

    def do_set_attr(self, step: dict[str, Any], op: OpTruth) -> None:
        from pkcs11 import Attribute

        self._key(step, op).signer()[Attribute[step["attr"]]] = step["value"]

    def do_find(self, step: dict[str, Any], op: OpTruth) -> None:
        from pkcs11 import Attribute, ObjectClass

        session = self._session(step, op)
        template = ({Attribute.LABEL: step["label"]} if "label" in step
                    else {Attribute.CLASS: ObjectClass[step["object_class"]]})
        op.args["found"] = len(list(session.get_objects(template)))

    def do_random(self, step: dict[str, Any], op: OpTruth) -> None:
        self._session(step, op).generate_random(step["n"] * 8)

    # -- data operations -----------------------------------------------------------------------
    def do_digest(self, step: dict[str, Any], op: OpTruth) -> None:
        from pkcs11 import Mechanism

        session = self._session(step, op)
        data = _data(step)
        session.digest(_feed(data, step["parts"]), mechanism=Mechanism[step["mech"]])

    def do_sign(self, step: dict[str, Any], op: OpTruth) -> None:
        entry = self._key(step, op)
        data = _data(step)
        mech, param = _mechanism(step["mech"], step)
        sig = entry.signer().sign(_feed(data, step["parts"]), mechanism=mech, mechanism_param=param)
        self.outputs[step["id"]] = {"key_id": step["key"], "data": data, "out": sig, "mech": step["mech"],
                                    "parts": step["parts"], "step": step}

    def do_verify(self, step: dict[str, Any], op: OpTruth) -> None:
        made = self.outputs[step["of"]]
        entry = self._key(step, op, made["key_id"])
        mech, param = _mechanism(made["mech"], made["step"])
        sig = _corrupt(made["out"], step.get("corrupt"))
        key, data = entry.verifier(), _feed(made["data"], made["parts"])
        # the private _verify* methods raise instead of returning False, so the rv is known
        if made["parts"] > 1:
            key._verify_generator(data, sig, mechanism=mech, mechanism_param=param)
        else:
            key._verify(data, sig, mechanism=mech, mechanism_param=param)

    def do_encrypt(self, step: dict[str, Any], op: OpTruth) -> None:
        entry = self._key(step, op)
        data = _data(step)
        mech, param = _mechanism(step["mech"], step)
        out = entry.secret.encrypt(_feed(data, step["parts"]), mechanism=mech, mechanism_param=param)
        out = out if isinstance(out, bytes) else b"".join(out)
        self.outputs[step["id"]] = {"key_id": step["key"], "data": data, "out": out, "mech": step["mech"],
                                    "parts": step["parts"], "step": step}

    def do_decrypt(self, step: dict[str, Any], op: OpTruth) -> None:
        made = self.outputs[step["of"]]
        entry = self._key(step, op, made["key_id"])
        mech, param = _mechanism(made["mech"], made["step"])
        out = entry.secret.decrypt(_feed(made["out"], made["parts"]), mechanism=mech, mechanism_param=param)
        out = out if isinstance(out, bytes) else b"".join(out)
        if out != made["data"]:
            raise RuntimeError("decrypted text differs from the plaintext")

    def do_decrypt_raw(self, step: dict[str, Any], op: OpTruth) -> None:
        entry = self._key(step, op)
        mech, param = _mechanism(step["mech"], step)
        entry.secret.decrypt(_data(step), mechanism=mech, mechanism_param=param)


def _raise_rv(rv: int) -> None:
    if rv != CKR["CKR_OK"]:
        from pkcs11.exceptions import PKCS11Error

        raise PKCS11Error(f"Unmapped error code {hex(rv)}")


def _data(step: dict[str, Any]) -> bytes:
    """The step's input bytes, remade from its seed (the plan stores no data)."""
    return random.Random(step["data_seed"]).randbytes(step["data_len"])


def _feed(data: bytes, parts: int) -> bytes | Any:
    """One buffer for a single-part call; an iterator of ``parts`` pieces for Init/Update/Final."""
    if parts <= 1:
        return data
    base, extra = divmod(len(data), parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return iter([data[a:b] for a, b in zip(bounds, bounds[1:])])


def _mechanism(name: str, step: dict[str, Any]) -> tuple[Any, Any]:
    """python-pkcs11 mechanism and parameter; IVs and nonces come from the step's seed."""
    from pkcs11 import MGF, Mechanism
    from pkcs11.mechanisms import CTRParams, GCMParams

    iv = random.Random(step.get("data_seed", 0) ^ 0x5A5A).randbytes(16)
    params: dict[str, Any] = {
        "SHA256_RSA_PKCS_PSS": (Mechanism.SHA256, MGF.SHA256, 32),
        "AES_CBC_PAD": iv,
        "AES_CBC": iv,
        "AES_OFB": iv,
        "AES_GCM": GCMParams(iv[:12], b"p11lens", 128),
        "AES_CTR": CTRParams(iv[:8]),
    }
    return Mechanism[name], params.get(name)


def _corrupt(sig: bytes, how: str | None) -> bytes:
    if how == "flip":
        return bytes([sig[0] ^ 0x01]) + sig[1:]
    if how == "truncate":
        return sig[:-1]
    return sig
