"""End-to-end tests of avssl-prep on a generated fake SAYCam tree (tests/fake_saycam.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avssl.cli.prep import compose_prep_config
from avssl.data.manifest import read_manifest
from avssl.data.media import probe, read_av_window
from avssl.data_tools import STAGES, InjectedFault, run_prep
from avssl.data_tools.util import file_sha256

sys.path.insert(0, str(Path(__file__).parent))
from conftest import console_script  # noqa: E402
from fake_saycam import EVENTS, FAKE_FILES, FakeFile, make_fake_saycam  # noqa: E402

SEG = 2.5  # 75 frames at 30 fps, 40000 samples at 16 kHz


def prep_cfg(src: Path, out: Path, *extra: str, tables: Path | None = None) -> dict:
    overrides = [f"src={src}", f"out={out}", "dataset=saycam", f"segment.length_s={SEG}", "segment.min_length_s=2.0",
                 "normalise.short_side=32", "workers=1", "progress=false", "split.heldout_children=[Y]"]
    if tables is not None:
        overrides += [f"dataset.birthdates={tables / 'birthdates.csv'}",
                      f"dataset.transcripts={tables / 'transcripts.csv'}"]
    return compose_prep_config(overrides + list(extra))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_fake_saycam(tmp_path_factory.mktemp("saycam"))
    out = root / "prep"
    result = run_prep(prep_cfg(root / "media", out, tables=root / "tables"), echo=lambda s: None)
    return root, out, result


def _rows(manifest_path: Path) -> dict[tuple[str, float], object]:
    return {(Path(r.path).name, r.start): r for r in read_manifest(manifest_path)}


def test_counts_durations_and_flags_as_constructed(prepared):
    root, out, result = prepared
    m = read_manifest(out / "manifest.csv")
    by_rec: dict[str, list] = {}
    for r in m:
        by_rec.setdefault(r.meta["recording"], []).append(r)
    # 6 readable recordings (the truncated one has no rows); 5 s -> 2 segments, 6 s -> 2 + a 1 s tail
    assert sorted(by_rec) == sorted(str(Path(f.rel).with_suffix("")) for f in FAKE_FILES if not f.truncate)
    for f in FAKE_FILES:
        if f.truncate:
            continue
        rows = sorted(by_rec[str(Path(f.rel).with_suffix(""))], key=lambda r: r.start)
        starts = [r.start for r in rows]
        ends = [r.end for r in rows]
        assert starts[0] == 0.0 and ends[-1] == pytest.approx(f.duration)
        assert starts[1:] == ends[:-1]  # contiguous grid
        assert len(rows) == int(np.ceil(f.duration / SEG))
        assert all(r.fps == 30.0 and r.sample_rate in (16000, None) for r in rows)
        assert all((r.width, r.height) == (42, 32) for r in rows)
    flagged = {(r.meta["recording"], r.start): sorted(k for k, v in r.flags.items() if v) for r in m if any(r.flags.values())}
    assert flagged == {
        ("S/S_20130417_0600_02", 2.5): ["dark"],
        ("S/S_20130417_0600_02", 5.0): ["too_short"],
        ("S/S_20130501_0700_01", 2.5): ["silence"],
        ("A/A_20140302_1100_01", 0.0): ["no_audio"],
        ("A/A_20140302_1100_01", 2.5): ["no_audio"],
        ("A/A_20140302_1100_02", 0.0): ["no_audio", "start_mismatch"],
        ("A/A_20140302_1100_02", 2.5): ["start_mismatch"],
    }
    assert [r.meta["recording"] for r in m if r.exclude] == [
        "A/A_20140302_1100_01", "A/A_20140302_1100_01", "A/A_20140302_1100_02",
        "S/S_20130417_0600_02", "S/S_20130417_0600_02"]
    late = next(r for r in m if r.meta["recording"] == "A/A_20140302_1100_02" and r.start == 0.0)
    assert float(late.meta["audio_valid_fraction"]) == pytest.approx(1 - 0.5 / SEG, abs=0.02)
    assert [(b.rel, b.reason) for b in result.bad_files] == [("Y/Y_20140610_0900_01.mp4", "undecodable")]
    assert json.loads((out / "bad_files.json").read_text())[0]["rel"] == "Y/Y_20140610_0900_01.mp4"


def test_metadata_splits_and_utterances(prepared):
    _, out, _ = prepared
    m = read_manifest(out / "manifest.csv")
    r = next(r for r in m if r.meta["recording"] == "S/S_20130417_0600_01" and r.start == 2.5)
    assert (r.meta["child"], r.meta["recording_date"], r.meta["session_id"], r.meta["part"]) == (
        "S", "2013-04-17", "S_20130417_0600", "01")
    assert r.meta["age_days"] == str((np.datetime64("2013-04-17") - np.datetime64("2012-10-21")).astype(int))
    # the utterance at 3 s into the video sits 0.5 s into the segment starting at 2.5 s
    assert json.loads(r.meta["utterances"]) == [{"t": 0.5, "speaker": "CHI", "text": "ball"}]
    split_of: dict[str, set[str]] = {}
    for row in m:
        split_of.setdefault(row.meta["session_id"], set()).add(row.split)
    assert all(len(s) == 1 for s in split_of.values())  # a session never straddles splits
    assert {r.split for r in m if r.meta["child"] == "Y"} == {"test"}  # held-out child
    # parts of one session share a split
    assert len({r.split for r in m if r.meta["session_id"] == "S_20130417_0600"}) == 1


def _assert_flashes_and_beeps(w, flashes) -> None:
    """Flash onsets within one frame of ``flashes`` and beep onsets within 5 ms of EVENTS in one decoded window."""
    f = w.frames.numpy().astype(np.float32)
    flash = w.frame_times.numpy()[f[:, 16:, 12:].mean(axis=(1, 2, 3)) > 200]
    flash_on = [flash[0]] + [t for p, t in zip(flash[:-1], flash[1:]) if t - p > 0.1]
    loud = np.flatnonzero(np.abs(w.audio.numpy()) > 0.3)
    beep_on = [loud[0]] + [j for i, j in zip(loud[:-1], loud[1:]) if j - i > 1600]
    assert np.allclose(flash_on, flashes, atol=1 / 30 + 1e-6)
    assert np.allclose(w.audio_start + np.asarray(beep_on) / w.sample_rate, EVENTS, atol=0.005)  # placed by pts


def test_picture_upright_and_streams_aligned(prepared):
    _, out, _ = prepared
    media = out / "media" / "S" / "S_20130417_0600_01.mp4"
    info = probe(media)
    assert info.video is not None and (info.video.width, info.video.height) == (42, 32)
    assert info.video.avg_fps == pytest.approx(30.0)
    w = read_av_window(media, 0.1, 0.2)
    frame = w.frames[0].numpy().astype(int)
    tl, br = frame[:8, :8].mean(axis=(0, 1)), frame[-8:, -8:].mean(axis=(0, 1))
    assert tl[0] > 180 and tl[1] < 80  # the red marker is top-left again
    assert not (br[0] > 180 and br[1] < 80)
    for name, flashes in (("S/S_20130417_0600_01.mp4", EVENTS), ("A/A_20140302_1100_02.mp4", EVENTS),
                          ("S/S_20130417_0600_02.mp4", EVENTS[:1])):  # its second flash is in the dark span
        _assert_flashes_and_beeps(read_av_window(out / "media" / name, 0.0, 5.0, fps=30.0), flashes)
    late = read_av_window(out / "media" / "A/A_20140302_1100_02.mp4", 0.0, 1.0)
    assert not late.audio_valid[:7000].any() or float(late.audio[:7000].abs().max()) < 1e-3  # padded, not shifted


def test_report_written(prepared):
    _, out, _ = prepared
    md = (out / "report" / "report.md").read_text()
    for needle in ("Hours per child", "Hours per split", "Hours per age month", "Bad files",
                   "Y/Y_20140610_0900_01.mp4", "| dark | 1 | 1 |", "| no_audio | 3 | 3 |"):
        assert needle in md
    for png in ("hours_per_child.png", "hours_per_split.png", "hours_per_age_month.png", "flags.png"):
        assert (out / "report" / png).read_bytes()[:4] == b"\x89PNG"


SMALL = (FakeFile("S/S_20130417_0600_01.mp4", 2.5, 25), FakeFile("A/A_20140302_1100_02.mp4", 2.5, 30, audio_delay=0.5),
         FakeFile("A/A_20140302_1100_03.mp4", 2.5, 30, audio=False, truncate=True))


def _hashes(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): file_sha256(p) for p in sorted((out / "media").rglob("*.mp4"))}


def _state(out: Path) -> tuple[list, dict]:
    return [r.to_record() for r in read_manifest(out / "manifest.csv", resolve_paths=False)], _hashes(out)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    root = make_fake_saycam(tmp_path_factory.mktemp("small"), SMALL)
    ref = root / "ref"
    run_prep(prep_cfg(root / "media", ref), echo=lambda s: None)
    return root, _state(ref)


@pytest.mark.parametrize("stage", STAGES)
def test_resume_after_fault_equals_uninterrupted(small_tree, tmp_path, stage):
    root, ref_state = small_tree
    out = tmp_path / "out"
    with pytest.raises(InjectedFault):
        run_prep(prep_cfg(root / "media", out, f"fault.after={stage}"), echo=lambda s: None)
    res = run_prep(prep_cfg(root / "media", out), echo=lambda s: None)
    assert _state(out) == ref_state
    if stage in ("normalise", "segment", "manifest", "report"):
        assert res.processed == [] and len(res.skipped) == 2  # finished work is not redone


def test_kill_mid_transcode_then_resume(small_tree, tmp_path):
    root, ref_state = small_tree
    out = tmp_path / "out"
    cmd = [console_script("avssl-prep"), f"src={root / 'media'}", f"out={out}", "dataset=saycam",
           f"segment.length_s={SEG}", "segment.min_length_s=2.0", "normalise.short_side=32", "workers=1",
           "progress=false", "split.heldout_children=[Y]", "fault.sleep_per_frame_s=0.03"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.time() + 60
        while time.time() < deadline and not list((out / "media").rglob("*.part")):
            time.sleep(0.05)
        assert list((out / "media").rglob("*.part")), "the transcode never started"
        time.sleep(0.3)
        proc.kill()  # SIGKILL mid-transcode
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "manifest.csv").exists()
    run_prep(prep_cfg(root / "media", out), echo=lambda s: None)
    assert _state(out) == ref_state
    assert not list(out.rglob("*.part"))


def test_shards_then_merge_equal_single_run(small_tree, tmp_path):
    root, ref_state = small_tree
    out = tmp_path / "out"
    for i in range(2):
        r = run_prep(prep_cfg(root / "media", out, f"shard={i}/2"), echo=lambda s: None)
        assert r.manifest is None
    assert not (out / "manifest.csv").exists()
    run_prep(prep_cfg(root / "media", out, "merge=true"), echo=lambda s: None)
    assert _state(out) == ref_state


def test_merge_before_shards_done_fails_clearly(small_tree, tmp_path):
    root, _ = small_tree
    out = tmp_path / "out"
    run_prep(prep_cfg(root / "media", out, "shard=1/2"), echo=lambda s: None)  # only the unreadable file
    with pytest.raises(RuntimeError, match="not been normalised"):
        run_prep(prep_cfg(root / "media", out, "merge=true"), echo=lambda s: None)


def test_cli_dry_run_lists_and_writes_nothing(small_tree, tmp_path):
    root, _ = small_tree
    out = tmp_path / "out"
    r = subprocess.run([console_script("avssl-prep"), f"src={root / 'media'}", f"out={out}",
                        "dataset=saycam", "dry_run=true", "hydra.run.dir=" + str(tmp_path / "h")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 media files" in r.stdout and "A/A_20140302_1100_02.mp4 -> media/A/A_20140302_1100_02.mp4 (to do)" in r.stdout
    assert not out.exists()


def test_rerun_is_idempotent(prepared):
    root, out, _ = prepared
    before = (out / "manifest.csv").read_bytes(), _hashes(out)
    res = run_prep(prep_cfg(root / "media", out, tables=root / "tables"), echo=lambda s: None)
    assert res.processed == [] and (out / "manifest.csv").read_bytes() == before[0] and _hashes(out) == before[1]


def test_segments_read_back_through_data_layer(prepared):
    """Consecutive segments of a normalised recording tile it: no frame or sample lost or repeated."""
    _, out, _ = prepared
    m = [r for r in read_manifest(out / "manifest.csv") if r.meta["recording"] == "S/S_20130417_0600_01"]
    wins = [read_av_window(r.path, r.start, r.end - r.start) for r in sorted(m, key=lambda r: r.start)]
    whole = read_av_window(m[0].path, 0.0, 5.0)
    assert sum(w.num_frames for w in wins) == whole.num_frames == 150
    assert np.array_equal(np.concatenate([w.frame_times.numpy() for w in wins]), whole.frame_times.numpy())
    assert sum(w.num_samples for w in wins) == whole.num_samples == 80000
    np.testing.assert_allclose(np.concatenate([w.audio.numpy() for w in wins]), whole.audio.numpy(), atol=1e-6)


def test_copy_of_tree_gives_identical_media(prepared, tmp_path):
    """Deterministic encoding: the same sources processed elsewhere give byte-identical media."""
    root, out, _ = prepared
    src = tmp_path / "media"
    shutil.copytree(root / "media" / "S", src / "S")
    out2 = tmp_path / "out"
    run_prep(prep_cfg(src, out2), echo=lambda s: None)
    h1 = {k: v for k, v in _hashes(out).items() if k.startswith("media/S/")}
    assert _hashes(out2) == h1


# ---------------------------------------------------------------------- normalise.enabled=false (source files)


@pytest.fixture(scope="module")
def measured(prepared, tmp_path_factory):
    """The same tree prepared without normalising: rows over the source files, statistics from one decode pass."""
    root, _, _ = prepared
    out = tmp_path_factory.mktemp("measured")
    result = run_prep(prep_cfg(root / "media", out, "normalise.enabled=false", tables=root / "tables"),
                      echo=lambda s: None)
    return root, out, result


def _key(r) -> tuple:
    return (r.meta["recording"], r.start, r.end)


def test_source_mode_rows_match_normalised_rows(prepared, measured):
    root, out_n, res_n = prepared
    _, out, result = measured
    normalised = {_key(r): r for r in read_manifest(out_n / "manifest.csv")}
    rows = {_key(r): r for r in read_manifest(out / "manifest.csv")}
    assert rows.keys() == normalised.keys()  # same grid, same recordings
    for k, r in rows.items():
        n = normalised[k]
        # same split, flags, exclusion and metadata; only the media columns and orient differ
        assert (r.split, r.flags, r.exclude, r.duration, r.has_audio) == (n.split, n.flags, n.exclude, n.duration,
                                                                           n.has_audio), k
        assert {c: v for c, v in r.meta.items() if c != "orient"} == n.meta
        assert r.meta["orient"] == "180"  # SAYCam's configured flip, applied when read
        src = root / "media" / r.meta["source"]
        assert Path(r.path).resolve() == src.resolve()
    assert (rows[("S/S_20130501_0700_01", 0.0, 2.5)].codec_video, rows[("S/S_20130501_0700_01", 0.0, 2.5)].fps) == (
        "mpeg4", pytest.approx(24.0))
    assert [(b.rel, b.reason) for b in result.bad_files] == [(b.rel, b.reason) for b in res_n.bad_files]
    assert not (out / "media").exists()  # nothing transcoded
    assert len(list((out / "stats").rglob("*.stats.npz"))) == 6
    assert (out / "report" / "report.md").is_file()


def test_source_mode_reads_upright_and_aligned_through_the_data_layer(measured):
    from avssl.data.datasets import AVClipDataset
    from avssl.data.sampling import ClipSpec

    _, out, _ = measured
    rows = [r for r in read_manifest(out / "manifest.csv") if r.meta["recording"] == "S/S_20130417_0600_01"]
    ds = AVClipDataset(rows, clip=ClipSpec(num_segments=1, segment_duration=0.5), fps=30.0, frame_size=32,
                       mode="center", split=None)
    frame = ds.read_clip(0)[0].frames[0, 0].numpy().astype(int)  # raw decoded frame, before any transform
    assert frame[:8, :8, 0].mean() > 180 and frame[:8, :8, 1].mean() < 80  # red marker top-left: upright
    assert not (frame[-8:, -8:, 0].mean() > 180 and frame[-8:, -8:, 1].mean() < 80)
    for name, flashes in (("S/S_20130417_0600_01", EVENTS), ("A/A_20140302_1100_02", EVENTS)):
        r = next(r for r in read_manifest(out / "manifest.csv") if r.meta["recording"] == name)
        _assert_flashes_and_beeps(read_av_window(r.path, 0.0, 5.0, fps=30.0, orient=r.meta["orient"]), flashes)


def test_source_mode_rerun_skips_and_switching_modes_redoes(measured, tmp_path):
    root, out, _ = measured
    before = (out / "manifest.csv").read_bytes()
    res = run_prep(prep_cfg(root / "media", out, "normalise.enabled=false", tables=root / "tables"),
                   echo=lambda s: None)
    assert res.processed == [] and len(res.skipped) == 6 and (out / "manifest.csv").read_bytes() == before
    # encoder-only settings do not invalidate the measurements
    res = run_prep(prep_cfg(root / "media", out, "normalise.enabled=false", "normalise.crf=30", tables=root / "tables"),
                   echo=lambda s: None)
    assert res.processed == []


def test_source_mode_dry_run_says_what_it_would_do(measured, tmp_path):
    root, _, _ = measured
    lines: list[str] = []
    run_prep(prep_cfg(root / "media", tmp_path / "o", "normalise.enabled=false", "dry_run=true"), echo=lines.append)
    text = "\n".join(lines)
    assert "S/S_20130417_0600_01.mp4 -> stats/S/S_20130417_0600_01.stats.npz (to do)" in text
    assert "normalise: off" in text and "rotate=180" in text
    assert not (tmp_path / "o").exists()


def test_orient_with_exact_size_and_in_evaluation_items(measured):
    from avssl.evaluation.sources import items_from_manifest

    _, out, _ = measured
    items = items_from_manifest(out / "manifest.csv")
    assert items and {it.orient for it in items} == {"180"}
    src = items[0].path
    # (H, W) is the size after the correction, whichever way it turns the picture
    assert tuple(read_av_window(src, 0.0, 0.2, orient="90", size=(20, 30)).frames.shape[1:3]) == (20, 30)
    assert tuple(read_av_window(src, 0.0, 0.2, orient="90", size=16).frames.shape[1:3]) == (21, 16)
    with pytest.raises(ValueError, match="orient"):
        read_av_window(src, 0.0, 0.2, orient="45")


def test_source_mode_bad_settings_fail_before_any_work(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ValueError, match="normalise.enabled must be true or false"):
        run_prep(prep_cfg(src, tmp_path / "o", "normalise.enabled=maybe"), echo=lambda s: None)
    with pytest.raises(ValueError, match="multiple of 90"):
        run_prep(prep_cfg(src, tmp_path / "o", "normalise.enabled=false", "normalise.rotate=45"), echo=lambda s: None)
    with pytest.raises(ValueError, match="multiple of 90"):  # a config error, not a bad file per recording
        run_prep(prep_cfg(src, tmp_path / "o", "normalise.rotate=upside"), echo=lambda s: None)
    assert not (tmp_path / "o").exists()
