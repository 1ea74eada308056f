"""Manifest schema: round trips (CSV, Parquet), validation errors naming file/line/column, versioning."""

from __future__ import annotations

from pathlib import Path

import pytest

from avssl.data.manifest import (
    MANIFEST_VERSION,
    Manifest,
    ManifestError,
    ManifestRow,
    ManifestVersionError,
    read_manifest,
    write_manifest,
)


def _rows() -> list[ManifestRow]:
    return [
        ManifestRow(path="a/x.mp4", start=0.0, end=10.0, split="train", duration=12.5, has_audio=True,
                    has_video=True, fps=25.0, width=160, height=120, sample_rate=16000, channels=2, rotation=180,
                    codec_video="h264", codec_audio="aac", flags={"dark": True},
                    meta={"child": "S", "age_days": "412", "label": "cat"}),
        ManifestRow(path="/abs/y.mkv", start=10.0, end=20.0, split="val", has_audio=False,
                    flags={"dark": False}, exclude=True, meta={"child": "A", "label": "dog"}),
        ManifestRow(path="b/z.mp4", start=0.25, end=3.75, split="test", meta={"child": "S"}),
    ]


@pytest.mark.parametrize("name", ["m.csv", "m.parquet"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    p = write_manifest(tmp_path / name, _rows(), extra_columns=["session"])
    m = read_manifest(p)
    assert isinstance(m, Manifest) and len(m) == 3 and m.version == MANIFEST_VERSION
    assert m.columns[:4] == ["path", "start", "end", "split"]
    assert "session" in m.columns and "flag_dark" in m.columns and "exclude" in m.columns
    a, b, c = m
    assert a.path == str(tmp_path / "a" / "x.mp4")  # relative paths resolve against the manifest's folder
    assert b.path == "/abs/y.mkv"
    assert (a.start, a.end, a.split, a.duration, a.fps) == (0.0, 10.0, "train", 12.5, 25.0)
    assert (a.width, a.height, a.sample_rate, a.channels, a.rotation) == (160, 120, 16000, 2, 180)
    assert a.has_audio is True and b.has_audio is False and c.has_audio is None
    assert a.codec_video == "h264" and c.codec_video is None
    assert a.flags == {"dark": True} and b.flags == {"dark": False} and c.flags == {"dark": False}
    assert b.exclude and not a.exclude
    assert a.meta["age_days"] == "412" and a.get("label") == "cat" and c.get("label") == ""
    assert a.get("session") == "" and a.get("flag_dark") is True
    assert c.start == 0.25 and c.length == 3.5
    # the second write gives identical content
    p2 = write_manifest(tmp_path / ("again" + p.suffix), read_manifest(p, resolve_paths=False))
    assert [r.to_record() for r in read_manifest(p2, resolve_paths=False)] == [
        r.to_record() for r in read_manifest(p, resolve_paths=False)
    ]


def test_csv_has_version_line_and_filter(tmp_path: Path) -> None:
    p = write_manifest(tmp_path / "m.csv", _rows())
    assert p.read_text().splitlines()[0] == f"# avssl-manifest v{MANIFEST_VERSION}"
    m = read_manifest(p)
    assert [r.split for r in m.filter("train")] == ["train"]
    assert len(m.filter("val")) == 0  # the val row is excluded
    assert len(m.filter("val", include_excluded=True)) == 1
    assert len(m.filter(["train", "test"])) == 2
    assert [r.meta["child"] for r in m.filter(child="S")] == ["S", "S"]
    with pytest.raises(ValueError, match="unknown split"):
        m.filter("dev")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_plain_csv_without_version_line_is_v1(tmp_path: Path) -> None:
    p = tmp_path / "hand.csv"
    p.write_text("path,start,end,split,label\nv.mp4,0,2.5,train,x\n")
    (r,) = read_manifest(p)
    assert r.end == 2.5 and r.meta == {"label": "x"}


def _expect(tmp_path: Path, text: str, match: str) -> ManifestError:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ManifestError, match=match) as ei:
        read_manifest(p)
    assert str(p) in str(ei.value)
    return ei.value


def test_validation_errors_name_file_line_column(tmp_path: Path) -> None:
    head = "# avssl-manifest v1\npath,start,end,split,fps,has_audio\n"
    e = _expect(tmp_path, head + "a.mp4,0,1,train,25,true\nb.mp4,0,abc,train,25,true\n", "line 4, column 'end'")
    assert e.line == 4 and e.column == "end"
    _expect(tmp_path, head + "a.mp4,2,1,train,25,true\n", "must be greater than start")
    _expect(tmp_path, head + "a.mp4,-1,1,train,25,true\n", "start must be >= 0")
    _expect(tmp_path, head + "a.mp4,0,1,dev,25,true\n", "column 'split'.*split must be one of")
    _expect(tmp_path, head + "a.mp4,0,1,train,25,maybe\n", "column 'has_audio'.*boolean")
    _expect(tmp_path, head + ",0,1,train,25,true\n", "column 'path'.*empty")
    _expect(tmp_path, head + "a.mp4,0,1,train\n", "line 3.*expected 6 fields, found 4")
    _expect(tmp_path, "# avssl-manifest v1\npath,start,split\n", "line 2.*missing required column.*'end'")
    _expect(tmp_path, "path,start,end,split,x,x\n", "duplicate column")
    _expect(tmp_path, "path,start,end,split,width\na,0,1,train,12.5\n", "column 'width'.*integer")


def test_newer_version_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "future.csv"
    p.write_text(f"# avssl-manifest v{MANIFEST_VERSION + 1}\npath,start,end,split\na.mp4,0,1,train\n")
    with pytest.raises(ManifestVersionError, match="newer than this avssl supports"):
        read_manifest(p)


def test_newer_parquet_version_is_refused(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    t = pa.table({"path": ["a"], "start": [0.0], "end": [1.0], "split": ["train"]})
    t = t.replace_schema_metadata({b"avssl_manifest_version": str(MANIFEST_VERSION + 1).encode()})
    pq.write_table(t, tmp_path / "f.parquet")
    with pytest.raises(ManifestVersionError):
        read_manifest(tmp_path / "f.parquet")


def test_write_validates_and_accepts_mappings(tmp_path: Path) -> None:
    p = write_manifest(tmp_path / "d.csv", [{"path": "a.mp4", "start": 0, "end": "2", "split": "val", "fps": 30}])
    (r,) = read_manifest(p)
    assert r.fps == 30.0 and r.split == "val"
    with pytest.raises(ManifestError, match="line 2, column 'end'"):
        write_manifest(tmp_path / "e.csv", [{"path": "a", "start": 0, "end": 1, "split": "train"},
                                            {"path": "b", "start": 3, "end": 1, "split": "train"}])
    assert not (tmp_path / "e.csv").exists()
    with pytest.raises(ManifestError, match="clashes"):
        write_manifest(tmp_path / "f.csv", _rows(), extra_columns=["flag_x"])
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.csv")
