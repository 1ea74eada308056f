"""Every shard representation round-trips: a clip read from a shard equals the clip ``AVClipDataset`` cuts from the
source file with the same seed and spec (timestamps and validity exact, pixels within codec tolerance, audio
exact for pcm/flac, log-mel equal to the dataset's), over formats x audio codecs x fps/size settings; the batched
main-process JPEG decode equals the worker decode; writes are byte-identical; format-1 shards still read."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("webdataset")

from mediagen import make_av_file  # noqa: E402

from avssl.data.datasets import AVClipDataset  # noqa: E402
from avssl.data.features import FbankConfig, frame_geometry  # noqa: E402
from avssl.data.manifest import ManifestRow, write_manifest  # noqa: E402
from avssl.data.media import read_av_window  # noqa: E402
from avssl.data.sampling import ClipSpec, hash_uniform  # noqa: E402
from avssl.data.shard_formats import (  # noqa: E402
    AUDIO_CODECS,
    AUDIO_MEMBER,
    VIDEO_FORMATS,
    decode_audio,
    quantize_audio,
)
from avssl.data.shards import ShardedClipDataset, ShardIndex  # noqa: E402
from avssl.data.transforms import VideoTransform  # noqa: E402
from avssl.data_tools.shards import ShardWriteConfig, write_shards  # noqa: E402

SETTINGS = [(8.0, 48, (64, 48)), (12.0, 64, (64, 80))]  # (fps, short side, source (width, height))
START, END = 0.25, 2.75  # on the source's frame grid at 8 and 12 fps and on the 16 kHz sample grid
TOL = {"jpeg": 4.0, "h264": 6.0, "h264_intra": 6.0}  # mean |difference| per frame, 0-255 levels
SEED = 5


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """One source per setting at the training fps and size, with int16 PCM audio (so stored audio is exact)."""
    root = tmp_path_factory.mktemp("src")
    out = {}
    for fps, _, size in SETTINGS:
        truth = make_av_file(root / f"src{int(fps)}.mov", acodec="pcm_s16le", duration=3.0, fps=fps, size=size,
                             events=(0.9, 1.7), gop=6, tone=0.1)
        out[fps] = Path(truth.path)
    return out


def _write(tmp: Path, src: Path, fps: float, size: int, **kw) -> ShardIndex:
    write_manifest(tmp / "m.csv", [ManifestRow(path=str(src), start=START, end=END, meta={"label": "a"})])
    cfg = ShardWriteConfig(samples_per_shard=4, max_segment_duration=None, size=size, fps=fps, splits=("train",),
                           **kw)
    result = write_shards(tmp / "m.csv", tmp / "out", cfg)
    assert result.complete and not result.failed
    return ShardIndex.load(tmp / "out", "train")


def _transform(size: int) -> VideoTransform:
    return VideoTransform(size, train=True, scale=(0.6, 1.0), ratio=(0.8, 1.25), hflip_p=0.5,
                          mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _reference(src: Path, meta_start: float, meta_end: float, clip: ClipSpec, fps: float, size: int,
               fbank: FbankConfig, epoch: int, ordinal: int = 0) -> dict:
    """The clip AVClipDataset cuts from the source row with the shard reader's documented seed and epoch."""
    seed = int(hash_uniform("shard-sample", SEED, ordinal) * 2**53)
    ds = AVClipDataset([ManifestRow(path=str(src), start=meta_start, end=meta_end, meta={"label": "a"})],
                       clip=clip, fps=fps, frame_size=size, sample_rate=fbank.sample_rate, fbank=fbank,
                       video_transform=_transform(size), mode="random", seed=seed, classes=["a"])
    ds.set_epoch(epoch * 1000)
    return ds[0]


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x * 0.25 * 255  # normalised (std 0.25) -> 0-255 levels


@pytest.mark.parametrize(("fps", "size", "src_size"), SETTINGS)
@pytest.mark.parametrize("audio", AUDIO_CODECS)
@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_shard_clip_equals_the_clip_cut_from_the_source(sources, tmp_path, fmt, audio, fps, size, src_size):
    index = _write(tmp_path, sources[fps], fps, size, format=fmt, audio=audio)
    clip, fbank = ClipSpec(3, 0.5, 0.1), FbankConfig(num_mel_bins=64)
    ds = ShardedClipDataset(index, clip=clip, fps=fps, frame_size=size, fbank=fbank, video_transform=_transform(size),
                            even="none", shuffle=False, seed=SEED)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        (got,) = list(ds)
        ref = _reference(sources[fps], START, END, clip, fps, size, fbank, epoch)
        assert torch.equal(got["segment_starts"], ref["segment_starts"])  # timestamps exact
        assert torch.equal(got["video_valid"], ref["video_valid"]) and torch.equal(got["audio_valid"], ref["audio_valid"])
        assert torch.equal(got["audio"], ref["audio"])  # int16 audio stored losslessly: the same log-mel
        assert got["video"].shape == ref["video"].shape == (3, 3, round(0.5 * fps), size, size)
        per_frame = (_pixels(got["video"]) - _pixels(ref["video"])).abs().mean(dim=(1, 3, 4))  # [S, T]
        assert float(per_frame.max()) < TOL[fmt], per_frame  # the same frames, within codec tolerance
        assert got["label"] == ref["label"] == 0 and got["path"] == ref["path"]
    # the stored audio is the source's samples, bit for bit
    with tarfile.open(index.urls[0]) as tf:
        data = tf.extractfile(f"train-000000000.{AUDIO_MEMBER[audio]}").read()  # type: ignore[union-attr]
    stored = decode_audio(data, audio, round((END - START) * 16000))
    source = read_av_window(sources[fps], START, END - START).audio.numpy()
    np.testing.assert_array_equal(quantize_audio(stored), quantize_audio(source))


class _AtStarts(AVClipDataset):
    """AVClipDataset cutting its one clip at given segment starts (to compare at the shard reader's starts)."""

    starts: list[float] = []

    def clip_times(self, index: int) -> tuple[list[float], list[float]]:
        return list(self.starts), list(self.starts)


@pytest.mark.parametrize("clip", [ClipSpec(2, 0.5), ClipSpec(3, 0.3, 0.1)])
@pytest.mark.parametrize("fbank", [FbankConfig(num_mel_bins=64), FbankConfig(num_mel_bins=40, frame_length_ms=32.0,
                                                                             frame_shift_ms=20.0)])
def test_stored_logmel_equals_the_datasets(sources, tmp_path, clip, fbank, caplog):
    fps, size, _ = SETTINGS[0]
    fb = {k: v for k, v in vars(fbank).items() if k != "sample_rate"}
    index = _write(tmp_path, sources[fps], fps, size, format="jpeg", logmel=True, fbank=fb)
    kw = dict(clip=clip, fps=fps, frame_size=size, fbank=fbank, video_transform=_transform(size), even="none",
              shuffle=False, seed=SEED)
    step = frame_geometry(fbank).step
    for epoch in (0, 1, 2):
        ds = ShardedClipDataset(index, **kw)  # type: ignore[arg-type]
        ds.set_epoch(epoch)
        (got,) = list(ds)
        starts = got["segment_starts"].tolist()
        assert all((round(s * 16000) - round(START * 16000)) % step == 0 for s in starts)  # on the log-mel grid
        ref_ds = _AtStarts([ManifestRow(path=str(sources[fps]), start=START, end=END)], clip=clip, fps=fps,
                           frame_size=size, fbank=fbank, mode="random", seed=0)
        ref_ds.starts = starts
        ref = ref_ds[0]
        # equal up to float32 rounding (the mean removal of the whole waveform vs of each segment)
        torch.testing.assert_close(got["audio"], ref["audio"], rtol=0, atol=2e-4)
        assert torch.equal(got["audio_valid"], ref["audio_valid"])
    # other settings than the stored ones: computed from the audio, and the log says why (once)
    other = FbankConfig(num_mel_bins=fbank.num_mel_bins + 8)
    with caplog.at_level(logging.INFO, logger="avssl.data.shards"):
        ds = ShardedClipDataset(index, **{**kw, "fbank": other})  # type: ignore[arg-type]
        got = list(ds) + list(ds)
    said = [r.getMessage() for r in caplog.records if "not using the stored one" in r.getMessage()]
    assert len(said) == 1 and "num_mel_bins" in said[0]
    assert got[0]["audio"].shape[-1] == other.num_mel_bins


@pytest.mark.parametrize("num_workers", [0, 2])
def test_main_process_jpeg_decode_equals_worker_decode(sources, tmp_path, num_workers):
    fps, size, _ = SETTINGS[1]
    write_manifest(tmp_path / "m.csv", [ManifestRow(path=str(sources[fps]), start=START + k * 0.5, end=START
                                                    + k * 0.5 + 1.5, meta={"label": "a"}) for k in range(4)])
    cfg = ShardWriteConfig(samples_per_shard=2, max_segment_duration=None, size=size, fps=fps, splits=("train",))
    write_shards(tmp_path / "m.csv", tmp_path / "out", cfg)
    index = ShardIndex.load(tmp_path / "out", "train")
    kw = dict(clip=ClipSpec(2, 0.5), fps=fps, frame_size=size, video_transform=_transform(size), batch_size=2,
              num_workers=num_workers, even="drop", seed=SEED)
    worker = ShardedClipDataset(index, **kw)  # type: ignore[arg-type]
    main = ShardedClipDataset(index, **kw, defer_video=True)  # type: ignore[arg-type]
    ctx = "fork" if num_workers else None
    a = list(DataLoader(worker, batch_size=2, num_workers=num_workers, multiprocessing_context=ctx,
                        collate_fn=worker.collate))
    b = [main.finish_batch(x, "cpu") for x in DataLoader(main, batch_size=2, num_workers=num_workers,
                                                         multiprocessing_context=ctx, collate_fn=main.collate)]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_jpeg_decode_matches_cpu(sources, tmp_path):
    fps, size, _ = SETTINGS[1]
    index = _write(tmp_path, sources[fps], fps, size)
    ds = ShardedClipDataset(index, clip=ClipSpec(2, 0.5), fps=fps, frame_size=size, even="none", defer_video=True)
    batch = next(iter(DataLoader(ds, batch_size=1, collate_fn=ds.collate)))
    cpu = ds.finish_batch({**batch, "video_jpeg": list(batch["video_jpeg"])}, "cpu")["video"]
    gpu = ds.finish_batch(batch, "cuda")["video"]
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    assert float((gpu.cpu() - cpu).abs().mean()) < 0.05  # nvJPEG's IDCT rounds differently from libjpeg-turbo


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_writes_are_byte_identical(sources, tmp_path, fmt):
    fps, size, _ = SETTINGS[0]
    write_manifest(tmp_path / "m.csv", [ManifestRow(path=str(sources[fps]), start=START, end=END)])
    cfg = ShardWriteConfig(samples_per_shard=4, max_segment_duration=1.0, min_segment_duration=0.5, size=size,
                           fps=fps, splits=("train",), format=fmt, audio="flac", logmel=True)
    write_shards(tmp_path / "m.csv", tmp_path / "a", cfg)
    write_shards(tmp_path / "m.csv", tmp_path / "b", cfg, num_workers=2)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n


def test_format_1_shards_still_read():
    """Shards written by the format-1 writer (tests/data/shards_v1, MP4 samples) give the clips that writer's
    reader gave (made by tests/data/shards_v1/make_shards_v1.py)."""
    root = Path(__file__).parent / "data" / "shards_v1"
    expected = torch.load(root / "expected.pt", weights_only=True)["samples"]
    index = ShardIndex.load(root / "shards", "train")
    assert "format" not in index.config  # written before representations existed
    ds = ShardedClipDataset(index, clip=ClipSpec(2, 0.25), fps=8, frame_size=32, batch_size=1, num_workers=0,
                            even="none", shuffle=False, seed=0)
    ds.set_epoch(1)
    got = list(ds)
    assert [g["key"] for g in got] == [e["key"] for e in expected] and len(got) == 3
    for g, e in zip(got, expected):
        torch.testing.assert_close(g["segment_starts"], e["segment_starts"], rtol=0, atol=1e-9)
        assert torch.equal(g["video_valid"], e["video_valid"]) and torch.equal(g["audio_valid"], e["audio_valid"])
        torch.testing.assert_close(g["video"], e["video"], rtol=0, atol=1e-5)
        torch.testing.assert_close(g["audio"], e["audio"], rtol=0, atol=1e-4)
        assert g["index"] == e["index"] and g["label"] == e["label"]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("output", ["float", "uint8"])
@pytest.mark.parametrize("fmt", ["jpeg", "h264"])
def test_batch_video_collate_equals_per_clip_tensors(sources, tmp_path, fmt, output, num_workers):
    """``batch_video``: clips cropped straight into the batch in ``collate`` (one copy) give batches identical
    to per-clip tensors collated, with and without a resize, in the main process and in forked workers."""
    fps, size, _ = SETTINGS[1]
    write_manifest(tmp_path / "m.csv", [ManifestRow(path=str(sources[fps]), start=START + k * 0.5, end=START
                                                    + k * 0.5 + 1.5, meta={"label": "a"}) for k in range(4)])
    cfg = ShardWriteConfig(samples_per_shard=2, max_segment_duration=None, size=size, fps=fps, splits=("train",),
                           format=fmt)
    write_shards(tmp_path / "m.csv", tmp_path / "out", cfg)
    index = ShardIndex.load(tmp_path / "out", "train")
    transforms = [VideoTransform(size, train=True, scale=s, ratio=r, hflip_p=0.5, output=output)
                  for s, r in (((1.0, 1.0), (1.0, 1.0)), ((0.6, 1.0), (0.8, 1.25)))]  # crop only; crop + resize
    ctx = "fork" if num_workers else None
    for tf in transforms:
        kw = dict(clip=ClipSpec(2, 0.5), fps=fps, frame_size=size, video_transform=tf, batch_size=2,
                  num_workers=num_workers, even="drop", seed=SEED)
        per_clip = ShardedClipDataset(index, **kw)  # type: ignore[arg-type]
        batched = ShardedClipDataset(index, **kw, batch_video=True)  # type: ignore[arg-type]
        assert batched.batch_video and not per_clip.batch_video
        for epoch in (0, 1):  # different crops and flips
            per_clip.set_epoch(epoch)
            batched.set_epoch(epoch)
            a = list(DataLoader(per_clip, batch_size=2, num_workers=num_workers, multiprocessing_context=ctx,
                                collate_fn=per_clip.collate))
            b = list(DataLoader(batched, batch_size=2, num_workers=num_workers, multiprocessing_context=ctx,
                                collate_fn=batched.collate))
            assert len(a) == len(b) == 2
            key = "video_uint8" if output == "uint8" else "video"
            for x, y in zip(a, b):
                assert set(x) == set(y) and key in y
                for k in x:
                    assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], k
    # samples taken by hand hold the pending clip, which collate finishes
    sample = next(iter(ShardedClipDataset(index, **{**kw, "num_workers": 0}, batch_video=True)))  # type: ignore[arg-type]
    assert "video_pending" in sample and "video" not in sample and "video_uint8" not in sample
    shape = sample["video_pending"].shape
    assert ShardedClipDataset.collate([sample])[key].shape == (1, *shape)
