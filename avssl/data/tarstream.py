"""A lean sequential reader of the tar shards (POSIX ustar / pax / GNU long names), grouped into WebDataset samples.

``tarfile`` in stream mode costs about 1 ms of Python per shard sample of four members (pax headers, field-by-field
parsing, many small reads), as much as decoding the clip's JPEG frames at 112 px (docs/benchmarks.md). This reader
parses each 512-byte header with one ``struct`` call and reads each member with one ``read``; samples follow
WebDataset's rule (consecutive files sharing a key, the key being the name up to the first dot of its last path
part), and URLs open through WebDataset's ``gopen`` (local paths, ``file:``, ``pipe:CMD``, HTTP(S) via curl).

Every problem raises :class:`TarError` naming the URL and the byte offset: a bad header checksum, a member cut short,
an archive that ends without its end-of-archive block (a truncated download would otherwise lose samples silently).
"""

from __future__ import annotations

import gzip
import mmap
import os
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

BLOCK = 512
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")
_ZERO = bytes(BLOCK)
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's base_plus_ext
_REGULAR = (b"0", b"\x00", b"7")


class TarError(ValueError):
    """A shard that is not a readable tar archive (the message names the URL and the offset)."""


class _Prepend:
    """``read`` of ``head`` followed by ``stream`` (the first block, read to detect gzip, goes back in front)."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out + (self.stream.read(n - len(out)) if len(out) < n else b"")


class _Mapped:
    """``read`` of a memory-mapped local file: each read is a ``memoryview`` of the mapping (no copy; only the
    pages a reader touches are read from the page cache). The mapping lives as long as any view of it."""

    def __init__(self, view: memoryview) -> None:
        self.view, self.pos = view, 0

    @classmethod
    def open(cls, path: str) -> _Mapped | None:
        """The mapped file, or None where mapping does not fit (an empty or gzip-compressed file) or the file
        system refuses to map the file (``mmap`` raises ``OSError`` on some network and FUSE file systems): the
        caller then streams it."""
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < BLOCK:
                return None
            try:
                view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            except (OSError, ValueError):
                return None
        if view[:2] == b"\x1f\x8b":
            return None
        return cls(view)

    def read(self, n: int = -1) -> memoryview:
        end = len(self.view) if n < 0 else min(len(self.view), self.pos + n)
        out = self.view[self.pos : end]
        self.pos = end
        return out

    def close(self) -> None:
        self.view = memoryview(b"")  # (the views handed out keep the mapping alive)


def _read(stream: Any, n: int) -> bytes | memoryview:
    """Exactly ``n`` bytes, or fewer only at the end of the stream."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data if isinstance(data, (bytes, memoryview)) else bytes(data)
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _number(field: bytes, what: str, where: str) -> int:
    if field[:1] == b"\x80":  # base-256 (GNU, star) for values that do not fit in octal: 0x80, then big-endian
        return int.from_bytes(field[1:], "big")
    if field[:1] and field[0] & 0x80:  # (0xff: a negative number, never a valid size or checksum)
        raise TarError(f"{where}: bad {what} field {field!r} in a tar header")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"{where}: bad {what} field {field!r} in a tar header") from None


def _pax(data: bytes, where: str) -> dict[str, str]:
    """Records ``"%d %s=%s\\n"`` of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        if space < 0 or length <= 0 or pos + length > len(data):
            raise TarError(f"{where}: bad pax extended header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def iter_tar_files(stream: Any, url: str) -> Iterator[tuple[str, bytes | memoryview]]:
    """``(name, data)`` of each regular file of the tar archive read from ``stream``, in order (gzip-compressed
    archives are read through ``gzip``); ``data`` is what the stream's ``read`` returns (``bytes``, or a
    ``memoryview`` from a memory-mapped file)."""
    first = _read(stream, BLOCK)
    if first[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=_Prepend(bytes(first), stream), mode="rb")  # type: ignore[call-overload]
        first = _read(stream, BLOCK)
    offset, header = 0, first
    pax_global: dict[str, str] = {}
    pending: dict[str, str] = {}  # pax / GNU long-name values for the next member
    while True:
        where = f"{url} (byte {offset})"
        if len(header) < BLOCK:
            raise TarError(f"{where}: the archive ends without its end-of-archive block (truncated?)"
                           if not header else f"{where}: the archive ends inside a tar header (truncated?)")
        if header == _ZERO:
            return
        f = _HEADER.unpack_from(header)
        checksum = _number(f[6], "checksum", where)
        if checksum != sum(header) - sum(header[148:156]) + 8 * 32:
            raise TarError(f"{where}: bad tar header checksum (not a tar file, or corrupt)")
        size = _number(f[4], "size", where)
        kind = f[7]
        if "size" in pending:
            try:
                size = int(pending["size"])
            except ValueError:
                raise TarError(f"{where}: bad pax size {pending['size']!r}") from None
        pad = -size % BLOCK
        data = _read(stream, size)  # (one read: no copy of the member beyond the stream's own)
        rest = _read(stream, pad + BLOCK)  # its padding and the next header
        if len(data) < size or len(rest) < pad:
            raise TarError(f"{where}: member of {size} bytes cut short at {len(data)} (truncated?)")
        header = rest[pad:]
        offset += BLOCK + size + pad
        if kind == b"x":
            pending.update(_pax(bytes(data), where))
            continue
        if kind == b"g":
            pax_global.update(_pax(bytes(data), where))
            continue
        if kind in (b"L", b"K"):
            if kind == b"L":
                pending["path"] = bytes(data).split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            continue
        name = pending.get("path") or pax_global.get("path")
        if name is None:
            name = f[0].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            prefix = f[15].split(b"\x00", 1)[0]
            if prefix and f[9][:5] == b"ustar":
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        pending = {}
        if kind in _REGULAR:
            yield name, data


def iter_tar_samples(urls: Sequence[str], zero_copy: bool = False) -> Iterator[dict[str, Any]]:
    """WebDataset samples (``__key__``, ``__url__`` and one ``bytes`` entry per file suffix) of the shards at
    ``urls``, in order; files named ``__*__`` are metadata and left out. A sample never spans two shards.

    ``zero_copy``: a shard that is a local file (not gzip-compressed) is memory-mapped and its entries are
    read-only ``memoryview`` s of the mapping, not ``bytes``: nothing is copied, and only the pages a reader
    touches (a clip's few frames of a long sample) are read from the page cache. A file must then not be
    truncated in place while read (replacing it by a rename, as the shard writer does, is safe)."""
    from webdataset import gopen as wds_gopen

    for url in urls:
        try:
            stream: Any = None
            if zero_copy and os.path.isfile(url):
                stream = _Mapped.open(url)
            if stream is None:
                stream = wds_gopen(url, "rb")
        except Exception as e:
            raise TarError(f"{url}: cannot open ({e})") from e
        read_all = False
        try:
            sample: dict[str, Any] | None = None
            for name, data in iter_tar_files(stream, url):
                if "/" not in name and name.startswith("__") and name.endswith("__"):
                    continue
                m = _KEY.match(name)
                if m is None:
                    continue
                key, suffix = m.group(1), m.group(2).lower()
                if sample is None or key != sample["__key__"] or suffix in sample:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                sample[suffix] = data
            read_all = True
            if sample is not None:
                yield sample
        except OSError as e:  # (a pipe whose command failed while we read)
            raise TarError(f"{url}: reading failed ({e})") from e
        finally:
            try:
                stream.close()  # (a pipe: waits for the command and checks its exit status)
            except Exception as e:
                if read_all:  # a reader that stopped early closes the pipe under the command: not an error
                    raise TarError(f"{url}: {e}") from e
