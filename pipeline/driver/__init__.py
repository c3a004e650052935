"""The driver: real PKCS#11 workloads through OpenSC's pkcs11-spy into SoftHSM2, with ground truth.

``drive(DriveOptions(...))`` builds an isolated token (`lab`), plans the workload from a seed
(`plans`), runs it in fresh child processes (`run`, `workloads`) and writes ``<trace>.truth.json``
(`truth`).  See docs/driver.md.
"""

from pipeline.driver.plans import WORKLOADS, make_plans

__all__ = ["WORKLOADS", "DriveOptions", "drive", "make_plans", "truth_path"]
_HARNESS = ("DriveOptions", "drive", "truth_path")


def __getattr__(name: str):
    """The harness (it loads python-pkcs11) only when a workload is driven, not for ``--help``."""
    if name in _HARNESS:
        from pipeline.driver import harness

        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
