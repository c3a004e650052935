"""The driver: real PKCS#11 workloads through OpenSC's pkcs11-spy into SoftHSM2, with ground truth.

``drive(DriveOptions(...))`` builds an isolated token (`lab`), plans the workload from a seed
(`plans`), runs it in fresh child processes (`run`, `workloads`) and writes ``<trace>.truth.json``
(`truth`).  See docs/driver.md.
"""

from pipeline.driver.harness import DriveOptions, drive, truth_path
from pipeline.driver.plans import WORKLOADS, make_plans

__all__ = ["WORKLOADS", "DriveOptions", "drive", "make_plans", "truth_path"]
