"""Feature extraction and evaluation on real (generated) media: preprocessing equals the training data path,
extraction writes timestamps and skips finished files, avssl-eval composes and runs end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import PRE, fake_checkpoint

from avssl import export as ex

pytest.importorskip("av")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 3 s demo videos (4 classes, half in val) and their manifest."""
    from avssl.data_tools.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("media")
    return make_demo_dataset(root, num_videos=8, duration=3.0, size=48, fps=16, val_fraction=0.5)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    fake_checkpoint(tmp / "m.ckpt", "cnn")
    ex.export_checkpoint(tmp / "m.ckpt", tmp / "b")
    return tmp / "b"


def test_preprocess_equals_the_training_dataset(media: Path) -> None:
    from avssl.data.datasets import AVClipDataset
    from avssl.data.features import FbankConfig
    from avssl.data.media import read_av_window
    from avssl.data.sampling import ClipSpec
    from avssl.data.transforms import VideoTransform

    pre = ex.Preprocessor(PRE)
    fb = FbankConfig(**PRE["fbank"])
    ds = AVClipDataset(
        media,
        clip=ClipSpec(num_segments=2, segment_duration=0.5),
        fps=8.0,
        frame_size=32,
        sample_rate=16000,
        fbank=fb,
        mode="center",
        split="train",
        video_transform=VideoTransform(32, mean=PRE["video_mean"], std=PRE["video_std"]),
    )
    sample = ds[0]
    t0 = float(sample["segment_starts"][0])
    win = read_av_window(sample["path"], t0, 1.0, fps=8.0, sample_rate=16000)
    torch.testing.assert_close(
        pre.video(win.frames, times=win.frame_times, start=t0, num_segments=2), sample["video"]
    )
    torch.testing.assert_close(pre.audio(win.audio, win.sample_rate), sample["audio"])


def test_extract_windows_timestamps_and_rerun_skips(media: Path, bundle: Path, tmp_path: Path) -> None:
    from avssl.evaluation.embed import EncoderPair, embed_windows
    from avssl.evaluation.extract import extract, read_embeddings

    folder = tmp_path / "in"
    by_class = {src.parent.name: src for src in sorted(media.parent.rglob("*.mp4"))}
    for cls in sorted(by_class)[:2]:  # two videos of two classes, kept in their sub-folders
        (folder / cls).mkdir(parents=True)
        (folder / cls / by_class[cls].name).write_bytes(by_class[cls].read_bytes())
    rep = extract(bundle, folder, tmp_path / "npz", window=1.0, hop=0.5, progress=False)
    assert len(rep.written) == 2 and not rep.failed
    files = sorted((tmp_path / "npz").rglob("*.npz"))
    assert [f.relative_to(tmp_path / "npz").parent.name for f in files] == sorted(by_class)[:2]
    out = read_embeddings(files[0])
    np.testing.assert_allclose(out["start"], [0.0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(out["end"], out["start"] + 1.0)
    assert out["video"].shape == (5, 16) and out["audio"].shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(out["video"], axis=1), 1.0, atol=1e-5)
    assert out["meta"]["window"] == 1.0 and out["meta"]["hop"] == 0.5
    # the chunked reads give what embedding each window alone gives
    pair = EncoderPair.load(bundle)
    v, a = embed_windows(pair, out["meta"]["path"], [1.5], 1.0)
    np.testing.assert_allclose(out["video"][3], v[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["audio"][3], a[0].numpy(), atol=1e-5)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = extract(bundle, folder, tmp_path / "npz", window=1.0, hop=0.5, progress=False)
    assert len(again.skipped) == 2 and not again.written
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # Parquet holds the same numbers
    extract(bundle, folder, tmp_path / "pq", window=1.0, hop=0.5, fmt="parquet", progress=False)
    pq = read_embeddings(tmp_path / "pq" / files[0].relative_to(tmp_path / "npz").with_suffix(".parquet"))
    np.testing.assert_allclose(pq["video"], out["video"], atol=1e-6)
    np.testing.assert_allclose(pq["start"], out["start"])


def test_extract_cli_and_bad_inputs(
    media: Path, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from avssl.cli.extract import main

    (tmp_path / "in").mkdir()
    src = sorted(media.parent.rglob("*.mp4"))[0]
    (tmp_path / "in" / "a.mp4").write_bytes(src.read_bytes())
    assert main([str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert (tmp_path / "o" / "a.mp4.npz").is_file()
    assert "written 1" in capsys.readouterr().out
    assert main([str(bundle), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such folder or manifest" in capsys.readouterr().err
    assert main([str(tmp_path / "nobundle"), str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 1


def _manifest(path: Path, files: list[Path]) -> Path:
    from avssl.data.manifest import ManifestRow, write_manifest

    write_manifest(path, [ManifestRow(path=str(f), start=0.0, end=1.0, split="train") for f in files])
    return path


def test_extract_outputs_are_unique_per_input(media: Path, bundle: Path, tmp_path: Path) -> None:
    """Two files of one name outside the manifest's folder get two outputs (name + hash of the resolved path),
    stable across runs; files inside it mirror their relative path."""
    from avssl.evaluation.extract import extract, output_path, read_embeddings

    srcs = sorted(media.parent.rglob("*.mp4"))
    for sub, src in (("a", srcs[0]), ("b", srcs[2])):  # /data/a/clip.mp4 and /data/b/clip.mp4
        (tmp_path / "data" / sub).mkdir(parents=True)
        (tmp_path / "data" / sub / "clip.mp4").write_bytes(src.read_bytes())
    (tmp_path / "lists" / "inside").mkdir(parents=True)
    (tmp_path / "lists" / "inside" / "clip.mp4").write_bytes(srcs[4].read_bytes())
    inputs = [tmp_path / "data" / "a" / "clip.mp4", tmp_path / "data" / "b" / "clip.mp4",
              tmp_path / "lists" / "inside" / "clip.mp4"]
    manifest = _manifest(tmp_path / "lists" / "m.csv", inputs)
    rep = extract(bundle, manifest, tmp_path / "out", progress=False)
    assert sorted(rep.written) == sorted(map(str, inputs)) and not rep.skipped and not rep.failed
    outputs = {m: Path(p) for m, p in rep.outputs.items()}
    assert len(set(outputs.values())) == 3
    assert outputs[str(inputs[2])] == tmp_path / "out" / "inside" / "clip.mp4.npz"
    for m in map(str, inputs[:2]):
        assert outputs[m].name.startswith("clip.mp4.") and outputs[m].suffix == ".npz"
        assert outputs[m] == output_path(m, manifest.parent, tmp_path / "out", "npz")  # stable
        assert read_embeddings(outputs[m])["meta"]["path"] == m
    a, b = (read_embeddings(outputs[str(m)]) for m in inputs[:2])
    assert not np.allclose(a["video"], b["video"])  # two videos, two sets of embeddings
    again = extract(bundle, manifest, tmp_path / "out", progress=False)
    assert sorted(again.skipped) == sorted(map(str, inputs)) and not again.written


def test_extract_collisions_are_errors_never_skips(
    media: Path, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from avssl.cli.extract import main
    from avssl.evaluation.extract import extract

    srcs = sorted(media.parent.rglob("*.mp4"))
    for root, src in (("one", srcs[0]), ("two", srcs[2])):
        (tmp_path / root).mkdir()
        (tmp_path / root / "clip.mp4").write_bytes(src.read_bytes())
    assert extract(bundle, tmp_path / "one", tmp_path / "out", progress=False).written
    written = (tmp_path / "out" / "clip.mp4.npz").read_bytes()
    # another input whose output name is taken by the first one's: an error naming both, nothing overwritten
    with pytest.raises(ValueError, match="clip.mp4.npz") as err:
        extract(bundle, tmp_path / "two", tmp_path / "out", progress=False)
    assert str(tmp_path / "one" / "clip.mp4") in str(err.value) and str(tmp_path / "two" / "clip.mp4") in str(err.value)
    assert (tmp_path / "out" / "clip.mp4.npz").read_bytes() == written
    assert main([str(bundle), str(tmp_path / "two"), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "avssl-extract: error:" in capsys.readouterr().err
    # one file listed under two names (a symbolic link): refused before anything is written
    (tmp_path / "alias").symlink_to(tmp_path / "two", target_is_directory=True)
    manifest = _manifest(tmp_path / "m.csv", [tmp_path / "two" / "clip.mp4", tmp_path / "alias" / "clip.mp4"])
    with pytest.raises(ValueError, match="same output"):
        extract(bundle, manifest, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


def test_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from avssl.cli.export import main

    fake_checkpoint(tmp_path / "m.ckpt", "cnn")
    assert main([str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "video" / "model.safetensors").is_file()
    assert (tmp_path / "b" / "audio" / "config.json").is_file()
    assert main([str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "v"), "--modality", "video"]) == 0
    assert not (tmp_path / "v" / "audio").exists()
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert main([str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "x")]) == 1
    assert "bad.ckpt" in capsys.readouterr().err


def _compose(overrides: list[str]):  # noqa: ANN202 - DictConfig
    from hydra import compose, initialize_config_module

    with initialize_config_module("avssl.conf.eval", version_base="1.3"):
        return compose("eval", overrides=overrides)


def test_eval_configs_compose_and_typos_fail() -> None:
    cfg = _compose(["checkpoint=x"])
    assert cfg.offset.min == -2.0 and cfg.offset.max == 2.0 and cfg.offset.step == 0.2
    assert list(cfg.tasks) == ["offset_acc", "retrieval", "probe"]
    ft = _compose(["experiment=finetune_demo", "checkpoint=x"])
    assert "finetune" in ft.tasks and ft.finetune.epochs == 10
    assert _compose(["experiment=quick"]).data.max_items == 12
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _compose(["offset.stepp=0.1"])  # misspelt key
    with pytest.raises(ConfigCompositionException):
        _compose(["offset.clips_per_item=many"])  # wrong type


@pytest.mark.slow  # every task on 8 short videos: ~15-30 s on a loaded 2-core machine
def test_eval_end_to_end(media: Path, bundle: Path, tmp_path: Path) -> None:
    from avssl.cli.evaluate import evaluate

    cfg = _compose(
        [
            f"checkpoint={bundle}",
            "data.source=manifest",
            f"data.path={media}",
            "data.eval_split=null",
            "offset.min=-1.0",
            "offset.max=1.0",
            "offset.step=0.5",
            "offset.clips_per_item=1",
            "probe.max_windows=2",
            "probe.k=1",
            "progress=false",
            "tasks=[offset_acc,retrieval,probe,finetune]",
            "finetune.modality=audio",
            "finetune.epochs=1",
            "finetune.segments_per_item=2",
        ]
    )
    res = evaluate(cfg, str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["offset_acc"]["num_offsets"] == 5 and saved["offset_acc"]["num_clips"] == 8
    assert saved["offset_acc"]["offsets"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert 0.0 <= saved["offset_acc"]["auc_sync"] <= 1.0
    assert saved["retrieval"]["num_items"] == 8 and "a2v_R@5" in saved["retrieval"]
    assert saved["probe"]["video"]["num_test"] == 4 and saved["probe"]["classes"] == sorted(
        saved["probe"]["classes"]
    )
    assert saved["finetune"]["num_test_segments"] == 8
    assert res["retrieval"] == saved["retrieval"]
    for png in ("offset_similarity.png", "retrieval_similarity.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_sources_labels_csv_and_caps(media: Path, tmp_path: Path) -> None:
    from avssl.evaluation.sources import apply_labels_csv, items_from_folder, resolve_items

    items = resolve_items("manifest", str(media))
    assert len(items) == 8 and {it.split for it in items} == {"train", "val"}
    capped = resolve_items("manifest", str(media), max_items=1)
    assert sorted(it.split for it in capped) == ["train", "val"]
    folder = items_from_folder(media.parent)
    assert len(folder) == 8 and all(it.label == Path(it.path).parent.name for it in folder)
    first = Path(items[0].path)
    (tmp_path / "labels.csv").write_text(f"path,label,split\n{first},special,test\n")
    relabelled = apply_labels_csv(items, tmp_path / "labels.csv")
    assert (relabelled[0].label, relabelled[0].split) == ("special", "test")
    assert all(it.label is None for it in relabelled[1:])
    (tmp_path / "bad.csv").write_text("file,class\nx,y\n")
    with pytest.raises(ValueError, match="'path' and 'label'"):
        apply_labels_csv(items, tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="data.source"):
        resolve_items("s3")


def test_manifest_orient_reaches_every_evaluation_read(media: Path, bundle: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest's ``orient`` column (avssl-prep normalise.enabled=false) is passed to every read of avssl-eval's
    tasks and of avssl-extract; rows of one file that disagree on it are refused."""
    from avssl.data.manifest import read_manifest, write_manifest
    from avssl.evaluation import run as ev
    from avssl.evaluation.embed import EncoderPair
    from avssl.evaluation.extract import extract
    from avssl.evaluation.sources import items_from_manifest

    rows = list(read_manifest(media))[:2]
    for r in rows:
        r.meta["orient"] = "180"
    write_manifest(tmp_path / "m.csv", rows)
    seen: list[str | None] = []
    real_read = EncoderPair.read

    def spy(self: EncoderPair, path: str, start: float, duration: float, orient: str | None = None,  # noqa: ANN202
            video_starts=None):
        seen.append(orient)
        return real_read(self, path, start, duration, orient, video_starts)

    monkeypatch.setattr(EncoderPair, "read", spy)
    pair = EncoderPair.load(bundle)
    items = items_from_manifest(tmp_path / "m.csv")
    assert [it.orient for it in items] == ["180", "180"]
    reads = {}
    for name, call in (
        ("offsets", lambda: ev.evaluate_offsets(pair, items, min_offset=-0.5, max_offset=0.5, step=0.5,
                                                progress=False)),
        ("retrieval", lambda: ev.evaluate_retrieval(pair, items, progress=False)),
        ("clip features", lambda: ev.item_embeddings(pair, items, progress=False)),
        ("finetune inputs", lambda: ev._segment_inputs(pair, items[0], "video", 2)),
        ("extract", lambda: extract(bundle, tmp_path / "m.csv", tmp_path / "out", progress=False)),
    ):
        seen.clear()
        call()
        reads[name] = sorted(set(seen), key=str)
    assert reads == {name: ["180"] for name in reads}

    bad = [rows[0], dataclasses.replace(rows[0], start=rows[0].start + 0.5, meta={**rows[0].meta, "orient": ""})]
    write_manifest(tmp_path / "bad.csv", bad)
    with pytest.raises(ValueError, match="disagree on the orient column"):
        extract(bundle, tmp_path / "bad.csv", tmp_path / "out2", progress=False)


def test_offset_clip_of_segments_is_the_mean_of_its_segments(media: Path, bundle: Path) -> None:
    """``offset.clip_seconds``: a clip of n segments scores each offset as the mean of its segments' similarities,
    each exactly as that segment scores alone; one segment is the default; evaluate_offsets makes room for the
    whole clip and reports its span."""
    from avssl.evaluation import run as ev
    from avssl.evaluation.embed import EncoderPair, offset_similarities
    from avssl.evaluation.sources import items_from_manifest

    pair = EncoderPair.load(bundle)
    item = items_from_manifest(media)[0]
    offsets = [-0.5, 0.0, 0.5]
    spec = pair.video.preprocessor.spec
    t0 = item.start + 0.5
    alone = torch.stack([offset_similarities(pair, item.path, float(t), offsets)
                         for t in spec.segment_starts(t0, 3)])
    joint = offset_similarities(pair, item.path, t0, offsets, num_segments=3)
    assert joint.shape == (3,)
    torch.testing.assert_close(joint, alone.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(offset_similarities(pair, item.path, t0, offsets, num_segments=1), alone[0])
    with pytest.raises(ValueError, match="num_segments"):
        offset_similarities(pair, item.path, t0, offsets, num_segments=0)
    clip = 2 * spec.segment_stride + spec.segment_duration
    m, sim, _ = ev.evaluate_offsets(pair, [item], min_offset=-0.5, max_offset=0.5, step=0.5, clip_seconds=clip,
                                    progress=False)
    assert m["segments_per_clip"] == 3 and m["clip_seconds"] == pytest.approx(clip) and sim.shape == (1, 3)
    m1, _, _ = ev.evaluate_offsets(pair, [item], min_offset=-0.5, max_offset=0.5, step=0.5, progress=False)
    assert m1["segments_per_clip"] == 1 and m1["clip_seconds"] == pytest.approx(spec.segment_duration)
    too_long = item.end - item.start  # no room for the clip and the offsets
    m2, _, _ = ev.evaluate_offsets(pair, [item, item], min_offset=-0.5, max_offset=0.5, step=0.5,
                                   clip_seconds=0.5, progress=False)
    assert m2["num_clips"] == 2
    with pytest.raises(ValueError, match="clip_seconds must be positive"):
        ev.evaluate_offsets(pair, [item], min_offset=-0.5, max_offset=0.5, step=0.5, clip_seconds=-1.0,
                            progress=False)
    with pytest.raises(ValueError, match="long enough"):
        ev.evaluate_offsets(pair, [item], min_offset=-0.5, max_offset=0.5, step=0.5, clip_seconds=too_long,
                            progress=False)


def test_retrieval_segments_aggregate_compares_moment_by_moment(media: Path, bundle: Path) -> None:
    """``retrieval.aggregate=segments``: the similarity of audio clip i and video clip j is the mean over the
    clips' segments of the per-segment cosines; ``embedding`` (default) keeps one vector per clip."""
    from avssl.evaluation import run as ev
    from avssl.evaluation.embed import EncoderPair, segment_embeddings
    from avssl.evaluation.sources import items_from_manifest

    pair = EncoderPair.load(bundle)
    items = items_from_manifest(media)[:4]
    spec = pair.video.preprocessor.spec
    clip = spec.segment_stride + spec.segment_duration  # two segments
    m, sim = ev.evaluate_retrieval(pair, items, clip_seconds=clip, ks=[1], aggregate="segments", progress=False)
    assert m["segments_per_clip"] == 2 and m["aggregate"] == "segments" and sim.shape == (4, 4)
    embs = [segment_embeddings(pair, it.path, ev.clip_positions(it, clip, 0.0, 0.0, 1)[0], 2, it.orient)
            for it in items]
    want = torch.tensor([[float((embs[i][1] * embs[j][0]).sum(-1).mean()) for j in range(4)] for i in range(4)],
                        dtype=torch.float64)
    torch.testing.assert_close(sim, want, atol=1e-6, rtol=0)
    top = sim.argmax(1) == torch.arange(4)
    assert m["a2v_R@1"] == pytest.approx(float(top.double().mean()))
    m2, _ = ev.evaluate_retrieval(pair, items, clip_seconds=clip, ks=[1], progress=False)
    assert m2["aggregate"] == "embedding"
    with pytest.raises(ValueError, match="aggregate"):
        ev.evaluate_retrieval(pair, items, aggregate="max", progress=False)
