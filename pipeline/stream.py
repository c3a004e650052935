"""Read a spy log in bounded blocks cut at record boundaries.

Memory stays flat whatever the log's size: a block is about ``block_size`` bytes, cut just
before a blank line (where a record starts, §3.1), so no clean record straddles two blocks.
Only a single record larger than the block (a huge hexdump) makes a block grow, to that
record's size.  The log is bytes, not UTF-8 (§2.5): it is decoded as Latin-1, which maps
every byte to one character, and Windows line ends are folded to ``\\n`` (§2.6).

A log may come compressed (logrotate's ``.gz``, an ``.xz`` attached to a ticket, a ``.zst``
from a support bundle): `LogReader` tells gzip, bzip2, xz and zstd apart by their first bytes
and decompresses as it reads, so memory stays as flat as for a plain log.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from pipeline.errors import InputError

BLOCK_SIZE = 1 << 20  # the unit of reading and of the dialect hints (the native engine cuts its ranges on the same grid)
MAX_BLOCKS_WITHOUT_BLANK = 16  # then cut at any line end: the slow path copes with a split record
_BLANK_LINE_STARTS = (b"\n\n", b"\n\r\n")

# First bytes of each compressed format (RFC 1952, bzip2's "BZh" + block size digit, the xz
# and zstd frame magics).  A spy log starts with a banner, a header or text, never with these.
MAGIC_BYTES = 6
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    *((b"BZh" + bytes([d]), "bzip2") for d in b"123456789"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
# pyarrow's zstd stream drops the whole buffer it was filling when the data ends early; small
# reads bound what a cut file loses (measured: 1 MiB reads lost all of a 900 KB prefix, 64 KiB none).
_ZSTD_READ = 64 << 10


def sniff(head: bytes) -> str | None:
    """The compression the first bytes of a file announce (None: plain text)."""
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


class _Stored(io.RawIOBase):
    """The file's bytes as stored: hashed, counted and reported as they are read.

    The first `MAGIC_BYTES` are read ahead (from a pipe too) to tell the compression, and
    handed out again by the first read.
    """

    def __init__(self, fh: BinaryIO, name: str, digest: hashlib._Hash, on_bytes: Callable[[int], None] | None) -> None:
        super().__init__()
        self._fh, self._name, self._digest, self._on_bytes = fh, name, digest, on_bytes
        self.size = 0
        self.head = self._take(MAGIC_BYTES)
        self._ahead = self.head

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._ahead:
            n = len(self._ahead) if n < 0 else n
            data, self._ahead = self._ahead[:n], self._ahead[n:]
            return data
        return self._take(n)

    def _take(self, n: int) -> bytes:
        try:
            data = self._fh.read(n)
        except OSError as exc:
            raise InputError(f"{self._name}: cannot read ({exc.strerror or exc})") from None
        self._digest.update(data)
        self.size += len(data)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        return data


class LogReader:
    """A log's text, read from the file as stored: plain, or decompressed when its first bytes
    say gzip, bzip2, xz or zstd (never the name: logrotate's ``.1.gz``, a download saved as
    ``.log`` and stdin all say nothing reliable).

    ``digest`` and ``raw_size`` are of the bytes as stored (what ``sha256sum`` shows), ``size``
    of the text.  A compressed stream that ends early (a file still being compressed, a cut
    download) reads as the text before the cut with ``truncated`` set, as a plain log cut
    mid-record reads; data that cannot be decompressed raises `InputError`.
    """

    def __init__(self, fh: BinaryIO, name: str, on_bytes: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.digest = hashlib.sha256()
        self._stored = _Stored(fh, name, self.digest, on_bytes)
        self.compression = sniff(self._stored.head)
        self.size = 0
        self.truncated = False
        self._read = self._stored.read if self.compression is None else self._decompressor()

    @property
    def raw_size(self) -> int:
        return self._stored.size

    def read(self, n: int) -> bytes:
        try:
            data = self._read(n)
        except EOFError:  # the stdlib decompressors' "ended before the end-of-stream marker"
            self.truncated = True
            return b""
        except (OSError, lzma.LZMAError, zlib.error, ValueError) as exc:
            if self.compression == "zstd" and "Truncated" in str(exc):  # pyarrow has no error type of its own for it
                self.truncated = True
                return b""
            raise InputError(f"{self.name}: damaged {self.compression} data ({exc})") from None
        self.size += len(data)
        return data

    def _decompressor(self) -> Callable[[int], bytes]:
        """``read(n)`` of the text: each returns at least a byte until the end, and never loses
        text decoded before a cut (stdlib: ``read1``, which raises only once nothing is left)."""
        if self.compression == "zstd":
            import pyarrow as pa  # already a dependency: no zstandard package needed

            stream = pa.CompressedInputStream(pa.PythonFile(self._stored, mode="r"), "zstd")
            return lambda n: stream.read(min(n, _ZSTD_READ))
        if self.compression == "gzip":
            return gzip.GzipFile(fileobj=self._stored).read1
        return {"bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}[self.compression](self._stored).read1


def _cut(buffer: bytearray | bytes) -> int:
    """Offset just after the last line end that is followed by a blank line (0: none)."""
    return max(buffer.rfind(sep) + 1 for sep in _BLANK_LINE_STARTS)


def iter_blocks(stream: BinaryIO | LogReader, block_size: int = BLOCK_SIZE) -> Iterator[str]:
    """Yield decoded text blocks; each starts at a line start, and all but the last end in ``\\n``."""
    for _, text in iter_sized_blocks(stream, block_size):
        yield text


def iter_sized_blocks(
    stream: BinaryIO | LogReader, block_size: int = BLOCK_SIZE, split_tail: bool = False
) -> Iterator[tuple[int, str]]:
    """Yield ``(byte length, text)`` blocks cut at record boundaries.

    The byte lengths give the offset of every block end in the text (incremental parsing,
    ``pipeline.jobs``).  With ``split_tail`` the data left at the end is cut once more at its
    last record boundary, so that only the last record (which a writer may still be
    appending to) is in the final block.
    """
    pending = bytearray()
    while chunk := stream.read(block_size):
        pending += chunk
        if len(pending) < block_size:
            continue
        cut = _cut(pending)
        if cut == 0 and len(pending) > MAX_BLOCKS_WITHOUT_BLANK * block_size:
            cut = pending.rfind(b"\n") + 1
        if cut:  # else one record larger than a block: keep reading until it ends
            yield cut, _decode(bytes(pending[:cut]))
            del pending[:cut]
    cut = _cut(pending) if split_tail else 0
    if cut:
        yield cut, _decode(bytes(pending[:cut]))
        del pending[:cut]
    if pending:
        yield len(pending), _decode(bytes(pending))


def _decode(raw: bytes) -> str:
    text = raw.decode("latin-1")
    return text.replace("\r\n", "\n") if "\r" in text else text
