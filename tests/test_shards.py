"""WebDataset shards: writing (atomic, resumable, parallel), A/V sync through re-encoding, epoch planning, and
exactly-once reading across 2 processes x 2 DataLoader workers, for every representation (the round-trip grid is
in test_shard_formats.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

pytest.importorskip("webdataset")

from mediagen import detect_audio_onsets, detect_flash_times, make_av_file  # noqa: E402

from avssl.data.manifest import ManifestRow, write_manifest  # noqa: E402
from avssl.data.sampling import ClipSpec  # noqa: E402
from avssl.data.shard_formats import AUDIO_MEMBER, VIDEO_FORMATS, VIDEO_MEMBER, decode_audio, decode_frames  # noqa: E402
from avssl.data.shards import (  # noqa: E402
    ShardedClipDataset,
    ShardError,
    ShardIndex,
    ShardWriteConfig,
    plan_epoch,
    write_shards,
)
from avssl.data_tools.demo import make_demo_dataset  # noqa: E402

CFG = ShardWriteConfig(samples_per_shard=2, max_segment_duration=1.0, min_segment_duration=0.5, size=48, fps=8)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 demo videos of 2.6 s cut into 3 pieces each: 15 train samples in 8 shards (the last holds one), in the
    default representation (out/) and in each other one (out_<format>/)."""
    root = tmp_path_factory.mktemp("shards")
    manifest = make_demo_dataset(root / "demo", num_videos=5, duration=2.6, size=48, fps=12, val_fraction=0.0)
    result = write_shards(manifest, root / "out", CFG, num_workers=2)
    assert result.complete and result.num_samples == {"train": 15, "val": 0} and not result.failed
    for fmt in VIDEO_FORMATS:
        if fmt != CFG.format:
            other = write_shards(manifest, root / f"out_{fmt}", dataclasses.replace(CFG, format=fmt, audio="flac"))
            assert other.complete and other.num_samples == result.num_samples
    return root


def _format_dir(shard_dir: Path, fmt: str) -> Path:
    return shard_dir / ("out" if fmt == CFG.format else f"out_{fmt}")


def _members(tar_path: Path, key: str) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tf:
        return {m.name.split(".", 1)[1]: tf.extractfile(m).read()  # type: ignore[union-attr]
                for m in tf.getmembers() if m.name.split(".", 1)[0] == key}


def _decoded(members: dict[str, bytes]) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(json, all stored frames, their file-clock times, audio) of one version-2 sample."""
    meta = json.loads(members["json"])
    vd, ad = meta["video"], meta["audio"]
    frames = decode_frames(members[VIDEO_MEMBER[vd["format"]]], vd, list(range(len(vd["index"]))))
    times = meta["start"] + np.asarray(vd["index"]) / meta["fps"]
    audio = decode_audio(members[AUDIO_MEMBER[ad["codec"]]], ad["codec"], ad["num_samples"]) if ad else np.zeros(0)
    return meta, frames, times, audio


def test_shards_are_plain_tar_files_with_frames_audio_and_json(shard_dir: Path):
    out = shard_dir / "out"
    index = json.loads((out / "index.json").read_text())
    assert index["version"] == 2 and index["config"]["format"] == CFG.format
    shards = index["splits"]["train"]["shards"]
    assert [s["num_samples"] for s in shards] == [2] * 7 + [1]
    with tarfile.open(out / shards[0]["name"]) as tf:
        names = tf.getnames()
    video, audio = VIDEO_MEMBER[CFG.format], AUDIO_MEMBER[CFG.audio]
    assert sorted(names) == sorted(f"train-00000000{i}.{ext}" for i in (0, 1) for ext in ("json", video, audio))
    members = _members(out / shards[0]["name"], "train-000000000")
    meta, frames, times, wave = _decoded(members)
    assert meta["start"] == 0.0 and meta["end"] == pytest.approx(round(2.6 * 12) / 12 / 3) and meta["meta"]["label"]
    assert meta["width"] == 48 and meta["height"] == 48 and meta["has_audio"] and meta["version"] == 2
    assert frames.shape == (7, 48, 48, 3) and np.allclose(np.diff(times), 1 / 8)  # at the training fps and size
    assert len(wave) == meta["audio"]["num_samples"] == round(meta["duration"] * 16000)
    assert len(members[video]) + len(members[audio]) < 60_000  # compact: 0.87 s at 48 px, 8 fps


def test_rerun_skips_finished_shards_and_refuses_other_settings(shard_dir: Path, tmp_path: Path):
    manifest = shard_dir / "demo" / "manifest.csv"
    out = shard_dir / "out"
    mtime = (out / "train-000003.tar").stat().st_mtime_ns
    (out / "train-000005.tar").unlink()  # an interrupted run: one shard missing
    again = write_shards(manifest, out, CFG)
    assert again.written == ["train-000005.tar"] and len(again.skipped) == 7 and again.complete
    assert (out / "train-000003.tar").stat().st_mtime_ns == mtime
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    with pytest.raises(ShardError, match="other settings"):
        write_shards(manifest, out, ShardWriteConfig(samples_per_shard=3, max_segment_duration=1.0,
                                                     min_segment_duration=0.5, size=48, fps=8))
    # split jobs: job 0 of 2 writes every other shard and no index yet; job 1 completes the folder
    part = write_shards(manifest, tmp_path / "jobs", CFG, job_index=0, num_jobs=2)
    assert not part.complete and not (tmp_path / "jobs" / "index.json").exists()
    rest = write_shards(manifest, tmp_path / "jobs", CFG, job_index=1, num_jobs=2)
    assert rest.complete and rest.num_samples["train"] == 15


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_stored_segment_keeps_sync_and_missing_audio(tmp_path: Path, fmt: str):
    truth = make_av_file(tmp_path / "src.mp4", duration=3.0, fps=25, size=(96, 64), audio_offset=0.5,
                         events=(1.2, 2.3), gop=50)
    write_manifest(tmp_path / "m.csv", [ManifestRow(path=truth.path, start=0.8, end=3.0)])
    cfg = ShardWriteConfig(samples_per_shard=4, max_segment_duration=None, size=64, fps=25, gop=5,
                           splits=("train",), format=fmt)
    write_shards(tmp_path / "m.csv", tmp_path / "out", cfg)
    meta, frames, times, wave = _decoded(_members(tmp_path / "out" / "train-000000.tar", "train-000000000"))
    assert frames.shape[1] == 64  # short side
    flashes = detect_flash_times(frames, times)
    onsets = detect_audio_onsets(wave, 16000, start=meta["audio"]["start"])
    np.testing.assert_allclose(flashes, truth.events, atol=0.041)  # one frame at 25 fps (file clock)
    np.testing.assert_allclose(onsets, truth.events, atol=0.003)

    # audio starting late: the stored sample marks the uncovered start invalid again (PCM: no encoder priming)
    late = make_av_file(tmp_path / "late.mp4", duration=2.0, fps=25, audio_offset=0.6, events=(1.0,))
    write_manifest(tmp_path / "m2.csv", [ManifestRow(path=late.path, start=0.0, end=2.0)])
    write_shards(tmp_path / "m2.csv", tmp_path / "out2", cfg)
    meta2 = json.loads(_members(tmp_path / "out2" / "train-000000.tar", "train-000000000")["json"])
    (lo, hi), = meta2["audio"]["valid"]
    # (the AAC source's encoder priming, 1024 samples = 64 ms, reads as near-silent valid audio before its start)
    assert 0.6 * 16000 - 2 * 1024 <= lo <= 0.6 * 16000 and hi == meta2["audio"]["num_samples"]

    # read back: a 2 s clip of 4 x 0.5 s is the whole sample; the first segment lies before the audio, the last two
    # after its start (the reader's partial-validity path); the first sample's audio is all real (the fast path)
    for out, want in ((tmp_path / "out2", [False, None, True, True]), (tmp_path / "out", [True] * 4)):
        ds = ShardedClipDataset(ShardIndex.load(out), clip=ClipSpec(4, 0.5), fps=25, frame_size=64, even="none",
                                shuffle=False)
        clip = next(iter(ds))
        for seg, w in zip(clip["audio_valid"], want):
            if w is not None:
                assert bool(seg.all()) if w else not bool(seg.any()), (out.name, clip["audio_valid"].float().mean(1))
        if want[1] is None:
            assert 0 < float(clip["audio_valid"][1].float().mean()) < 1  # audio starts inside the second segment


def test_plan_epoch_even_modes():
    counts = [2, 2, 2, 2, 2, 2, 2, 1]
    none = plan_epoch(counts, epoch=0, seed=0, world_size=2, num_workers=2, batch_size=2, even="none")
    flat = sorted(s for rs in none.shards for ws in rs for s in ws)
    assert flat == list(range(8)) and sum(none.samples_per_rank) == 15 and none.dropped == none.padded == 0
    drop = plan_epoch(counts, epoch=0, seed=0, world_size=2, num_workers=2, batch_size=2, even="drop")
    assert drop.batches_per_rank == [3, 3] and drop.dropped == 3 and drop.padded == 0
    assert all(q % 2 == 0 for qs in drop.quota for q in qs)
    pad = plan_epoch(counts, epoch=0, seed=0, world_size=2, num_workers=2, batch_size=2, even="pad")
    assert pad.batches_per_rank == [4, 4] and pad.padded == 1 and pad.dropped == 0
    other = plan_epoch(counts, epoch=1, seed=0, world_size=2, num_workers=2, batch_size=2)
    assert other.shards != drop.shards  # shard order reshuffled per epoch
    with pytest.raises(ShardError, match="cannot be split over 16 ranks"):
        plan_epoch(counts, epoch=0, seed=0, world_size=16, num_workers=1, batch_size=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reader_worker(rank: int, world: int, port: int, out_dirs: dict[str, str], result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results: dict[str, dict] = {}
        for fmt, out_dir in out_dirs.items():
            index = ShardIndex.load(out_dir, "train")
            for even in ("none", "drop", "pad"):
                if fmt != CFG.format and even != "none":
                    continue  # the plan does not depend on the representation
                # even="none" decodes the samples (in the representation); drop / pad count keys only
                ds = ShardedClipDataset(index, clip=ClipSpec(2, 0.25), fps=8, frame_size=48, batch_size=2,
                                        num_workers=2, even=even, seed=3, decode=even == "none")
                epochs = []
                for epoch in (0, 1):
                    ds.set_epoch(epoch)
                    # workers forked: a spawned process would otherwise spawn (and re-import torch in) its workers
                    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
                    batches = [[str(k) for k in b["key"]] for b in loader]
                    epochs.append({"batches": batches, "len": len(loader), "plan": vars(ds.plan())})
                results[f"{fmt}/{even}"] = epochs
        with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.barrier()  # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_reader_yields_every_sample_once_across_two_processes_and_two_workers(shard_dir: Path, tmp_path: Path):
    """Keys of every batch over 2 ranks x 2 workers, each sample decoded in every representation (even="none"),
    and the drop / pad accounting (one spawn for all, to keep it fast)."""
    dirs = {fmt: str(_format_dir(shard_dir, fmt)) for fmt in VIDEO_FORMATS}
    mp.spawn(_reader_worker, args=(2, _free_port(), dirs, str(tmp_path)), nprocs=2, join=True)
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    everything = {f"train-{i:09d}" for i in range(15)}
    for epoch in (0, 1):
        for fmt in VIDEO_FORMATS:
            keys = [k for r in res for b in r[f"{fmt}/none"][epoch]["batches"] for k in b]
            assert sorted(keys) == sorted(everything), fmt  # exactly once across 2 ranks x 2 workers
        drop = [[k for b in r[f"{CFG.format}/drop"][epoch]["batches"] for k in b] for r in res]
        plan = res[0][f"{CFG.format}/drop"][epoch]["plan"]
        assert len(drop[0]) == len(drop[1]) == plan["samples_per_rank"][0]  # ranks even
        assert all(len(b) == 2 for r in res for b in r[f"{CFG.format}/drop"][epoch]["batches"])
        assert len(set(drop[0] + drop[1])) == 15 - plan["dropped"]  # no repeats; drops as reported
        assert [len(r[f"{CFG.format}/drop"][epoch]["batches"]) for r in res] == \
            [r[f"{CFG.format}/drop"][epoch]["len"] for r in res]
        pad = [[k for b in r[f"{CFG.format}/pad"][epoch]["batches"] for k in b] for r in res]
        pplan = res[0][f"{CFG.format}/pad"][epoch]["plan"]
        assert len(pad[0]) == len(pad[1]) and set(pad[0] + pad[1]) == everything
        assert len(pad[0]) + len(pad[1]) - 15 == pplan["padded"]
    order = [[k for b in res[0][f"{CFG.format}/none"][e]["batches"] for k in b] for e in (0, 1)]
    assert order[0] != order[1]  # shuffled differently each epoch


def test_decoded_batches_follow_the_sample_contract(shard_dir: Path):
    index = ShardIndex.load(shard_dir / "out", "train")
    ds = ShardedClipDataset(index, clip=ClipSpec(2, 0.25), fps=8, frame_size=48, batch_size=4, num_workers=0,
                            even="drop", seed=0)
    assert len(ds) == 12 and ds.classes == ["chirp_triangle", "noise_ring", "sine_circle", "square_square"]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["video"].shape == (4, 2, 3, 2, 48, 48) and batch["audio"].shape[:3] == (4, 2, 1)
    assert batch["video_valid"].all() and batch["audio_valid"].float().mean() > 0.9
    assert batch["label"].min() >= 0 and batch["num_skipped"].sum() == 0
    assert all(p.endswith(".mp4") and "demo" in p for p in batch["path"])  # the source files
    first = next(iter(ds))
    again = next(iter(ds))
    assert torch.equal(first["video"], again["video"]) and torch.equal(first["audio"], again["audio"])


def test_bad_index_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ShardError, match="cannot read the shard index"):
        ShardIndex.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ShardError, match="not an avssl shard index"):
        ShardIndex.load(tmp_path)


def test_resume_skips_consumed_batches(shard_dir: Path):
    index = ShardIndex.load(shard_dir / "out", "train")
    kw = dict(clip=ClipSpec(2, 0.25), batch_size=2, num_workers=2, even="drop", seed=1, decode=False)
    full = [list(b["key"]) for b in DataLoader(ShardedClipDataset(index, **kw), batch_size=2, num_workers=2)]
    ds = ShardedClipDataset(index, **kw)
    ds.skip_batches = 2
    rest = [list(b["key"]) for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert rest == full[2:]


@pytest.mark.slow
def test_training_reads_shards_through_the_datamodule(shard_dir: Path, tmp_path: Path):
    from hydra import compose, initialize_config_module

    from avssl.lit.run import train

    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            "debug=[tiny,fast_dev_run]", "data=shards", f"data.path={shard_dir / 'out'}", "data.val_split=train",
            "data.num_workers=0", "data.batch_size=2", "data.val_batch_size=2", "data.num_segments=2",
            "data.segment_duration=0.25", "data.fbank.num_mel_bins=64", "data.frame_size=48",
            f"output_dir={tmp_path}", "logger=none", "trainer.enable_progress_bar=false"])
    result = train(cfg)
    assert result.metrics["val/loss"] == result.metrics["val/loss"]  # finite (not NaN)
    assert result.metrics["data/bad_files"] == 0


def test_manifest_orient_is_baked_into_the_shard_once(tmp_path: Path):
    """A row's ``orient`` correction (avssl-prep normalise.enabled=false) is applied when the shard is written and
    dropped from the shard's metadata, so the shard reader does not apply it a second time."""
    from fake_saycam import FakeFile, make_fake_saycam

    root = make_fake_saycam(tmp_path / "tree", (FakeFile("S/S_20130417_0600_01.mp4", 2.0, 25),))  # upside down
    src = root / "media" / "S" / "S_20130417_0600_01.mp4"
    write_manifest(tmp_path / "m.csv", [ManifestRow(path=str(src), start=0.0, end=2.0,
                                                    meta={"orient": "180", "child": "S"})], extra_columns=["child"])
    cfg = ShardWriteConfig(samples_per_shard=4, max_segment_duration=None, size=48, fps=25, splits=("train",))
    write_shards(tmp_path / "m.csv", tmp_path / "out", cfg)
    meta, frames, _, _ = _decoded(_members(tmp_path / "out" / "train-000000.tar", "train-000000000"))
    assert meta["orient_applied"] == "180" and meta["meta"] == {"child": "S"}
    frame = frames[3].astype(int)
    assert frame[:8, :8, 0].mean() > 180 and frame[:8, :8, 1].mean() < 80  # red marker top-left: upright


def _corrupt_copy(src: Path, dst: Path, bad_keys: set[str], member: str = "mjpeg") -> None:
    """A copy of the shard folder ``src`` in which the ``member`` of each of ``bad_keys`` is replaced by junk bytes
    (a truncated copy of itself followed by junk)."""
    import io
    import shutil

    shutil.copytree(src, dst)
    for tar_path in dst.glob("*.tar"):
        with tarfile.open(tar_path) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
        if not any(m.name.rsplit(".", 1)[0] in bad_keys for m, _ in members):
            continue
        with tarfile.open(tar_path, "w") as tf:
            for m, data in members:
                if m.name.endswith("." + member) and m.name.rsplit(".", 1)[0] in bad_keys:
                    data = data[: len(data) // 2] + b"this is not a media file" * 4
                    m.size = len(data)
                tf.addfile(m, io.BytesIO(data))


@pytest.mark.parametrize(("fmt", "member"), [("jpeg", "mjpeg"), ("jpeg", "pcm"), ("h264", "h264"),
                                             ("h264", "flac")])
def test_undecodable_samples_are_replaced_so_ranks_stay_even(shard_dir: Path, tmp_path: Path, fmt: str,
                                                             member: str):
    """Two bad samples (a broken video or audio member) on one rank: every rank still yields its planned number
    of full batches (the bad samples replaced by good ones, counted in num_replaced), and a resume after them
    continues exactly."""
    from avssl.lit.distributed import ResumableDataLoader

    index = ShardIndex.load(_format_dir(shard_dir, fmt), "train")
    kw = dict(clip=ClipSpec(2, 0.25), fps=8, frame_size=48, batch_size=2, num_workers=0, even="drop", seed=2,
              world_size=2)
    plain = ShardedClipDataset(index, **{**kw, "decode": False}, rank=0)  # type: ignore[arg-type]
    rank0_keys = [str(s["key"]) for s in plain]
    bad = set(rank0_keys[:2])  # in rank 0's first batch
    _corrupt_copy(_format_dir(shard_dir, fmt), tmp_path / "bad", bad, member)
    bad_index = ShardIndex.load(tmp_path / "bad", "train")
    per_rank = [list(DataLoader(ShardedClipDataset(bad_index, **kw, rank=r), batch_size=2))  # type: ignore[arg-type]
                for r in range(2)]
    plan = ShardedClipDataset(bad_index, **kw, rank=0).plan()  # type: ignore[arg-type]
    assert [len(b) for b in per_rank] == plan.batches_per_rank == [3, 3]  # equal, whatever failed
    assert sum(int(b["num_replaced"].sum()) for bs in per_rank for b in bs) == 2  # reported as data/replaced
    for rank, batches in enumerate(per_rank):
        assert all(len(b["key"]) == 2 for b in batches)
        assert not bad & {k for b in batches for k in b["key"]}
        if rank == 0:
            full = [list(b["key"]) for b in batches]
            loader = ResumableDataLoader(ShardedClipDataset(bad_index, **kw, rank=0), batch_size=2)  # type: ignore[arg-type]
            it = iter(loader)
            head = [list(next(it)["key"]) for _ in range(2)]
            state = loader.state_dict()
            assert state["stream_positions"][0][1] == 6  # 4 good + 2 replaced samples read
            again = ResumableDataLoader(ShardedClipDataset(bad_index, **kw, rank=0), batch_size=2)  # type: ignore[arg-type]
            again.load_state_dict(state)
            assert head + [list(b["key"]) for b in again] == full


def test_shards_written_at_other_settings_are_refused(shard_dir: Path):
    index = ShardIndex.load(shard_dir / "out", "train")  # written at 8 fps, short side 48 px, 16 kHz
    with pytest.raises(ShardError, match=r"fps: shards written at 8, data.fps=16") as e:
        ShardedClipDataset(index, clip=ClipSpec(2, 0.25), fps=16, frame_size=64)
    assert "size: shards written with short side 48 px, data.frame_size=64" in str(e.value)
    from avssl.data.features import FbankConfig

    with pytest.raises(ShardError, match="sample rate: shards written at 16000 Hz, data.fbank.sample_rate=8000"):
        ShardedClipDataset(index, clip=ClipSpec(2, 0.25), fps=8, frame_size=48, fbank=FbankConfig(sample_rate=8000))
    ShardedClipDataset(index, clip=ClipSpec(2, 0.25), fps=8, frame_size=48)  # matching settings


def _run_shards(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    from conftest import console_script

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the installed package
    return subprocess.run([console_script("avssl-shards"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "want"), [
    ([], {"format": "jpeg", "audio": "pcm", "fps": 8.0, "size": 112, "logmel": False}),  # the training config's
    (["--format", "h264_intra", "--audio", "flac", "--logmel", "--size", "32", "--fps", "12"],
     {"format": "h264_intra", "audio": "flac", "fps": 12.0, "size": 32, "logmel": True}),
    (["--config", "data.fps=4", "--config", "data.frame_size=40", "--config", "data.fbank.num_mel_bins=32",
      "--logmel"], {"format": "jpeg", "fps": 4.0, "size": 40, "logmel": True}),
])
def test_avssl_shards_writes_the_training_configs_settings_by_default(tmp_path: Path, args: list[str], want: dict):
    """The installed ``avssl-shards``, run outside the repository: defaults from conf (data=shards: data.fps,
    data.frame_size, data.fbank, data.shards.write), flags and --config overrides on top."""
    manifest = make_demo_dataset(tmp_path / "demo", num_videos=2, duration=2.0, size=48, fps=12, val_fraction=0.0)
    proc = _run_shards([str(manifest), "--out", str(tmp_path / "out"), "--splits", "train", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((tmp_path / "out" / "index.json").read_text())["config"]
    assert {k: cfg[k] for k in want} == want
    if want.get("logmel") and "--config" in args:
        assert cfg["fbank"]["num_mel_bins"] == 32
    inspect = _run_shards(["--inspect", str(tmp_path / "out")], tmp_path)
    assert inspect.returncode == 0 and f"samples, {want['format']}" in inspect.stdout
    bad = _run_shards([str(manifest), "--out", str(tmp_path / "bad"), "--config", "data.no_such_key=1"], tmp_path)
    assert bad.returncode == 1 and "no_such_key" in bad.stderr


def test_datamodule_decode_device(shard_dir: Path):
    """data.shards.decode_device: cpu / auto on a CPU machine decode in the workers; cuda without a CUDA trainer
    fails naming the setting; a batch left to the main process is decoded by the DataModule's transfer hook."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from avssl.lit.datamodule import AVDataModule

    def module(mode: str) -> AVDataModule:
        with initialize_config_module("avssl.conf", version_base="1.3"):
            cfg = compose("train", overrides=[
                "data=shards", f"data.path={shard_dir / 'out'}", "data.val_split=train", "data.num_workers=0",
                "data.batch_size=2", "data.num_segments=2", "data.segment_duration=0.25", "data.frame_size=48",
                f"data.shards.decode_device={mode}"])
        return AVDataModule(OmegaConf.to_container(cfg.data, resolve=True), seed=0)  # type: ignore[arg-type]

    if not torch.cuda.is_available():
        for mode in ("cpu", "auto"):
            dm = module(mode)
            dm.setup("fit")
            assert not dm.train_set.defer_video  # type: ignore[union-attr]
            assert next(iter(dm.train_dataloader()))["video"].shape == (2, 2, 3, 2, 48, 48)
        with pytest.raises(ValueError, match="decode_device=cuda but training runs on cpu"):
            module("cuda").setup("fit")
    dm = module("cpu")
    dm.setup("fit")
    worker = next(iter(dm.train_dataloader()))
    ds = dm.train_set
    ds.defer_video = True  # type: ignore[union-attr]
    deferred = next(iter(dm.train_dataloader()))
    assert "video" not in deferred and len(deferred["video_jpeg"]) == 2
    done = dm.on_before_batch_transfer(deferred, 0)
    torch.testing.assert_close(done["video"].cpu(), worker["video"], rtol=0, atol=0.05)


def test_python_writer_defaults_equal_the_config_defaults():
    """``ShardWriteConfig()`` (the Python API) writes what ``avssl-shards`` writes by default: the values of
    conf/data/shards.yaml and the data config it extends, so the two cannot drift apart."""
    from avssl.cli.shards import config_defaults

    conf = config_defaults()
    py = dataclasses.asdict(ShardWriteConfig())
    assert {k: py[k] for k in conf if k != "fbank"} == {k: v for k, v in conf.items() if k != "fbank"}


@pytest.mark.parametrize("source", ["shards", "folder"])
def test_datamodule_normalise_video_on_device(shard_dir: Path, source: str):
    """data.normalise_video=device: the workers hand cropped uint8 frames (``video_uint8``, channels last, a
    quarter of the bytes) and the transfer hook normalises them where the batch is, giving exactly the batch
    ``workers`` gives; the deferred JPEG path normalises as before; auto on a CPU trainer keeps ``workers``; a
    bad value fails naming the key."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from avssl.lit.datamodule import AVDataModule

    where = (["data=shards", f"data.path={shard_dir / 'out'}", "data.val_split=train"] if source == "shards" else
             ["data=folder", f"data.path={shard_dir / 'demo'}", "data.val_fraction=0.5"])

    def module(mode: str) -> AVDataModule:
        with initialize_config_module("avssl.conf", version_base="1.3"):
            cfg = compose("train", overrides=[
                *where, "data.num_workers=0", "data.batch_size=2", "data.num_segments=2",
                "data.segment_duration=0.25", "data.frame_size=48", "data.augment.crop_scale=[0.5,1.0]",
                f"data.normalise_video={mode}"])
        dm = AVDataModule(OmegaConf.to_container(cfg.data, resolve=True), seed=0)  # type: ignore[arg-type]
        dm.setup("fit")
        return dm

    ref = next(iter(module("workers").train_dataloader()))
    dm = module("device")
    raw = next(iter(dm.train_dataloader()))
    assert "video" not in raw and raw["video_uint8"].dtype == torch.uint8
    assert raw["video_uint8"].shape == (2, 2, 2, 48, 48, 3)
    done = dm.on_after_batch_transfer(raw, 0)
    assert "video_uint8" not in done
    torch.testing.assert_close(done["video"], ref["video"], rtol=0, atol=0)
    val = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    torch.testing.assert_close(val["video"], next(iter(module("workers").val_dataloader()))["video"], rtol=0, atol=0)
    if source == "shards":
        ds = dm.train_set
        ds.defer_video = True  # type: ignore[union-attr]
        deferred = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
        assert deferred["video"].dtype == torch.float32
        torch.testing.assert_close(deferred["video"], ref["video"], rtol=0, atol=0.05)
    if not torch.cuda.is_available():
        assert "video" in next(iter(module("auto").train_dataloader()))
    with pytest.raises(ValueError, match="data.normalise_video must be"):
        module("gpu")
