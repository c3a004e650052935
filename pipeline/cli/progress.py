"""A progress bar on stderr for long work, shown only to a person watching a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

MIN_BYTES = 32 << 20  # below this a run is over before a bar is worth drawing


@contextmanager
def byte_progress(total: int | None, label: str) -> Iterator[Callable[[int], None]]:
    """Yield a callback that advances a byte-count bar (a no-op off a terminal or for small input)."""
    if not sys.stderr.isatty() or (total is not None and total < MIN_BYTES):
        yield lambda _n: None
        return
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False) as bar:
        yield bar.update
