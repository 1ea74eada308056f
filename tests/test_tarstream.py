"""The lean tar reader of the shards: the same samples as WebDataset's ``tarfile``-based reader for every tar flavour
Python's ``tarfile`` writes, and a clear error naming the shard for every broken archive."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

wds = pytest.importorskip("webdataset")

from avssl.data.shards import ShardError, iter_shard_samples  # noqa: E402
from avssl.data.tarstream import TarError, iter_tar_files, iter_tar_samples  # noqa: E402

LONG = "d" * 60 + "/" + "e" * 70  # > 100 characters: a ustar prefix, a pax path or a GNU long name


def _members() -> list[tuple[str, bytes]]:
    return [
        ("a.json", b'{"x": 1}'),
        ("a.mjpeg", bytes(range(256)) * 7),
        ("a.pcm", b""),  # empty member
        ("__meta__", b"left out"),
        ("b.json", b"{}"),
        ("b.logmel", b"\x01" * 1024),  # a whole number of blocks: no padding
        ("B.JSON.GZ", b"z"),  # suffixes are lower-cased, key ends at the first dot
        ("sub/c.json", b"[1]"),
        (LONG + ".x.json", b"long"),
        ("c\u00e9.json", b"non-ascii name"),
    ]


def _write(path: Path, fmt: int, *, float_mtime: bool = False, compress: bool = False, dirs: bool = True) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        if dirs:
            info = tarfile.TarInfo("sub")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in _members():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), (0.5 if float_mtime else 0)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)


def _wds_samples(urls: list[str]) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


@pytest.mark.parametrize("fmt,float_mtime,compress", [
    (tarfile.PAX_FORMAT, True, False),  # pax headers on every member (what wds.TarWriter(mtime=0.0) writes)
    (tarfile.PAX_FORMAT, False, False),
    (tarfile.GNU_FORMAT, False, False),  # GNU long-name members
    (tarfile.USTAR_FORMAT, False, False),  # ustar name prefixes
    (tarfile.PAX_FORMAT, True, True),  # gzip-compressed
])
@pytest.mark.parametrize("zero_copy", [False, True])
def test_same_samples_as_webdataset(tmp_path: Path, fmt: int, float_mtime: bool, compress: bool, zero_copy: bool):
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold a non-ASCII name or a 70-character last part
        members = [(n, d) for n, d in _members() if n.isascii() and n != LONG + ".x.json"]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for name, data in members + [("p" * 90 + "/" + "q" * 50 + ".json", b"prefixed")]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        (tmp_path / "s0.tar").write_bytes(buf.getvalue())
    else:
        _write(tmp_path / "s0.tar", fmt, float_mtime=float_mtime, compress=compress)
    _write(tmp_path / "s1.tar", tarfile.PAX_FORMAT)  # a second shard: samples never span two
    urls = [str(tmp_path / "s0.tar"), str(tmp_path / "s1.tar")]
    ours, theirs = list(iter_tar_samples(urls, zero_copy=zero_copy)), _wds_samples(urls)
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
    assert ours == theirs
    # zero_copy: members of a mapped shard are memoryviews of it (a gzip shard streams and gives bytes)
    kinds = {type(v) for s in ours[:len(ours) // 2] for k, v in s.items() if not k.startswith("__")}
    assert kinds == ({memoryview} if zero_copy and not compress else {bytes})
    keys = [s["__key__"] for s in ours]
    assert "__meta__" not in keys and keys.count("a") == 2
    if fmt != tarfile.USTAR_FORMAT:
        assert LONG in keys and "c\u00e9" in keys
        assert next(s for s in ours if s["__key__"] == "B")["json.gz"] == b"z"  # suffix lower-cased, second dot


def test_pipe_urls_stream_through_gopen(tmp_path: Path):
    _write(tmp_path / "s.tar", tarfile.PAX_FORMAT)
    url = f"pipe:cat {tmp_path / 's.tar'}"
    assert list(iter_tar_samples([url])) == _wds_samples([url])


def test_base256_sizes_read(tmp_path: Path):
    """GNU tar writes sizes of 8 GiB and more in base-256 (0x80, then big-endian): the same rule at a small size."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("x.bin")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    raw = bytearray(buf.getvalue())
    raw[124:136] = b"\x80" + (5).to_bytes(11, "big")
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\x00 " % sum(raw[:512])
    assert tarfile.open(fileobj=io.BytesIO(bytes(raw))).getmembers()[0].size == 5  # what tarfile reads too
    assert list(iter_tar_files(io.BytesIO(bytes(raw)), "mem")) == [("x.bin", b"hello")]


def test_pipe_commands_failing_or_closed_early(tmp_path: Path):
    _write(tmp_path / "s.tar", tarfile.PAX_FORMAT)
    with pytest.raises(ShardError, match="exit"):  # the whole archive came, then the command failed
        list(iter_shard_samples([f"pipe:cat {tmp_path / 's.tar'}; exit 3"]))
    big = tmp_path / "big.tar"  # larger than a pipe's buffer, so the command is still writing when we stop
    with tarfile.open(big, "w") as tf:
        for i in range(64):
            info = tarfile.TarInfo(f"k{i:03d}.bin")
            info.size = 65536
            tf.addfile(info, io.BytesIO(bytes(65536)))
    it = iter_shard_samples([f"pipe:cat {big}"])
    assert next(it)["__key__"] == "k000"
    it.close()  # a reader at its quota stops mid-shard: no error


def _good(tmp_path: Path) -> bytes:
    _write(tmp_path / "good.tar", tarfile.PAX_FORMAT, float_mtime=True)
    return (tmp_path / "good.tar").read_bytes()


@pytest.mark.parametrize("cut,problem", [
    # (layout: directory header at 0; a.json's pax header at 512, its records 1024-1536, its header at 1536,
    # its 8 bytes from 2048)
    (lambda raw: raw[:2052], "cut short"),  # inside a member
    (lambda raw: raw[:1000], "inside a tar header"),
    (lambda raw: raw[:1536], "without its end-of-archive block"),  # at a block boundary
    (lambda raw: raw[:5] + b"\x07" + raw[6:], "checksum"),  # a changed header byte
    (lambda raw: raw[:1024] + b"9" + raw[1025:], "bad pax extended header"),  # a record length past its end
    (lambda raw: b"not a tar file, just some text\n" * 40, "checksum"),
])
def test_broken_archives_raise_naming_the_shard(tmp_path: Path, cut, problem: str):
    bad = tmp_path / "bad.tar"
    good = _good(tmp_path)
    assert [m.offset_data for m in tarfile.open(tmp_path / "good.tar").getmembers()[:2]] == [512, 2048]
    bad.write_bytes(cut(good))
    with pytest.raises(TarError, match=problem) as e:
        list(iter_tar_files(open(bad, "rb"), str(bad)))
    assert str(bad) in str(e.value)
    for zero_copy in (False, True):  # what the dataset raises, streamed or memory-mapped
        with pytest.raises(ShardError, match=f"{bad}.*{problem}"):
            list(iter_shard_samples([str(bad)], zero_copy=zero_copy))


def test_missing_shard_names_it(tmp_path: Path):
    for zero_copy in (False, True):
        with pytest.raises(ShardError, match="nowhere.tar"):
            list(iter_shard_samples([str(tmp_path / "nowhere.tar")], zero_copy=zero_copy))
    (tmp_path / "empty.tar").write_bytes(b"")  # (too short to map: read as a stream, and refused)
    with pytest.raises(ShardError, match="empty.tar.*end-of-archive"):
        list(iter_shard_samples([str(tmp_path / "empty.tar")], zero_copy=True))


def test_mapped_members_outlive_the_reader(tmp_path: Path):
    """A memory-mapped shard's members stay readable after the reader has finished with the file."""
    _write(tmp_path / "s.tar", tarfile.PAX_FORMAT)
    samples = list(iter_tar_samples([str(tmp_path / "s.tar")], zero_copy=True))
    import gc

    gc.collect()
    assert bytes(samples[0]["mjpeg"]) == bytes(range(256)) * 7 and samples[0]["mjpeg"].readonly


def test_a_file_that_cannot_be_mapped_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Where the file system refuses ``mmap`` (some network and FUSE mounts), the shard is read as a stream:
    the same samples, as ``bytes``."""
    import mmap

    import avssl.data.tarstream as ts

    _write(tmp_path / "s.tar", tarfile.PAX_FORMAT)
    mapped = list(iter_tar_samples([str(tmp_path / "s.tar")], zero_copy=True))

    calls: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise OSError(19, "No such device")

    monkeypatch.setattr(ts.mmap, "mmap", refuse)
    streamed = list(iter_tar_samples([str(tmp_path / "s.tar")], zero_copy=True))
    assert [{k: bytes(v) if k[:2] != "__" else v for k, v in s.items()} for s in mapped] == streamed
    assert all(isinstance(v, bytes) for s in streamed for k, v in s.items() if k[:2] != "__")
    assert len(calls) == 1 and mmap.mmap is refuse  # (the reader did try to map the file)
