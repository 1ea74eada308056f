"""The raw-file decode path (issue 13): rotation from the container header without decoding, scaling inside the
decoder to what the crop needs (``decode_size``), and pictures no target shows left undecoded; each gives the
same frames as the plain full decode."""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
import torch
from mediagen import make_av_file, read_frame_index

from avssl.data import _display, _pyav
from avssl.data import media as media_mod
from avssl.data.datasets import AVClipDataset
from avssl.data.features import FbankConfig
from avssl.data.manifest import ManifestRow
from avssl.data.media import MediaReader, probe, read_av_window
from avssl.data.preprocess import decode_size
from avssl.data.sampling import ClipSpec
from avssl.data.transforms import VideoTransform

pytestmark = pytest.mark.usefixtures("one_thread")


class SpyContainer:
    """An open container that counts the packets demuxed and the frames decoded through it."""

    def __init__(self, container: Any, log: dict[str, int]):
        self._c, self._log = container, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)

    def demux(self, *args: Any, **kwargs: Any) -> Any:
        for packet in self._c.demux(*args, **kwargs):
            self._log["packets"] += 1
            yield packet

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        for frame in self._c.decode(*args, **kwargs):
            self._log["frames"] += 1
            yield frame


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    log = {"packets": 0, "frames": 0, "opened": 0}
    real = _pyav.open_container

    def open_spied(path: str, threads: int | None = None) -> Any:
        log["opened"] += 1
        return SpyContainer(real(path, threads), log)

    monkeypatch.setattr(_pyav, "open_container", open_spied)
    return log


def decoded_rotation(path: str) -> int:
    """What FFmpeg attaches to the first decoded frame (the old probe's answer)."""
    with av.open(path) as c:
        return _pyav._rotation_from_degrees(next(c.decode(video=0)).rotation)


def write_matrix_file(path: str, matrix: list[int], container: str = "mp4") -> str:
    """A short H.264 file whose stream carries ``matrix`` (FFmpeg's row-major 16.16 / 2.30 display matrix)."""
    with av.open(path, "w", format=container) as out:
        vs = out.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.set_display_matrix(matrix)
        for i in range(5):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:12, :16] = (230, 20, 20)
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            fr.pts, fr.time_base = i, Fraction(1, 10)
            for p in vs.encode(fr):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    return path


def _fixed(x: float, frac_bits: int = 16) -> int:
    return int(round(x * (1 << frac_bits)))


def rotation_matrix(deg: float, hflip: bool = False, vflip: bool = False) -> list[int]:
    """FFmpeg's ``av_display_rotation_set`` (a clockwise angle) then ``av_display_matrix_flip``."""
    r = -np.deg2rad(deg)
    c, s = np.cos(r), np.sin(r)
    m = [_fixed(c), _fixed(-s), 0, _fixed(s), _fixed(c), 0, 0, 0, 1 << 30]
    for i in range(9):
        m[i] *= (-1 if hflip and i % 3 == 0 else 1) * (-1 if vflip and i % 3 == 1 else 1)
    return m


# ------------------------------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("ext,vcodec", [("mp4", "h264"), ("mov", "h264"), ("mkv", "vp9"), ("mkv", "h264"),
                                        ("webm", "vp9")])
@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_header_rotation_is_what_ffmpeg_decodes(av_file, ext, vcodec, rotation):
    truth = av_file(f"hdr_{rotation}_{vcodec}.{ext}", rotation=rotation, vcodec=vcodec, duration=0.6,
                    start_pts_offset=7.0 if ext == "mkv" else 0.0)
    with av.open(truth.path) as c, open(truth.path, "rb") as f:
        s = c.streams.video[0]
        deg = _display.header_rotation(f, c.format.name, s.index, s.id, len(c.streams))
    assert deg is not None
    assert _pyav._rotation_from_degrees(deg) == decoded_rotation(truth.path) == rotation


@pytest.mark.parametrize("deg,hflip,vflip", list(itertools.product([0, 90, -90, 180], [False, True], [False, True])))
def test_header_rotation_of_any_matrix_matches_ffmpeg(tmp_path, deg, hflip, vflip):
    """Mirrored and rotated matrices: the header reader gives FFmpeg's angle (flips are ignored, as there)."""
    path = write_matrix_file(str(tmp_path / "m.mp4"), rotation_matrix(deg, hflip, vflip))
    with av.open(path) as c, open(path, "rb") as f:
        s = c.streams.video[0]
        got = _display.header_rotation(f, c.format.name, s.index, s.id, len(c.streams))
        want = next(c.decode(video=0)).rotation
    assert got is not None and round(got) % 360 == round(want) % 360


@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov"])
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_files_open_without_decoding_and_give_the_same_frames(av_file, spy, ext, rotation):
    truth = av_file(f"rot_{rotation}.{ext}", rotation=rotation, vcodec="h264", size=(96, 64), duration=2.0)
    reader = MediaReader(truth.path)
    info = reader.info
    assert spy["opened"] == 1 and spy["packets"] == 0 and spy["frames"] == 0  # opening decoded nothing
    assert info.video.rotation == rotation == decoded_rotation(truth.path)
    for start, fps, size in [(0.0, None, None), (0.3, 8, None), (1.1, 10, 32), (0.5, 25, (40, 30))]:
        win = reader.read(start, 0.8, fps=fps, size=size)
        assert spy["packets"] > 0  # the spy sees the reads
        # the same frames as turning plain PyAV's full decode by the decoded rotation
        with av.open(truth.path) as c:
            origin = Fraction(c.start_time or 0, av.time_base)
            full = [(float(f.pts * f.time_base - origin), f) for f in c.decode(video=0)]
        times = np.array([t for t, _ in full])
        for k, t in enumerate(win.source_frame_times.numpy()):
            j = int(np.flatnonzero(np.isclose(times, t, atol=1e-9))[0])
            frame = full[j][1]
            want = np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90)
            if size is None:
                assert np.array_equal(win.frames[k].numpy(), want)
            assert read_frame_index(np.rot90(win.frames[k].numpy(), k=-(rotation // 90))) == j
        h, w = (96, 64) if rotation in (90, 270) else (64, 96)
        if size is None:
            assert win.frames.shape[1:3] == (h, w)
    reader.close()


def test_avi_falls_back_to_decoding_one_frame(av_file, spy):
    """AVI has no display matrix in its header: the rotation comes from a decoded frame, as before."""
    truth = av_file("fallback.avi", duration=1.0)
    assert MediaReader(truth.path).info.video.rotation == 0
    assert spy["packets"] > 0


def test_reader_reuses_a_given_probe_result(av_file, spy):
    truth = av_file("reuse_info.mp4", duration=1.0)
    info = probe(truth.path)
    spy.update(packets=0, frames=0, opened=0)
    reader = MediaReader(truth.path, info=info)
    assert reader.info is info and spy["opened"] == 0
    other = av_file("reuse_other.mp4", duration=1.0, fps=10)
    with pytest.raises(ValueError, match="another file"):
        MediaReader(other.path, info=info)


def test_dataset_does_not_probe_a_reopened_file_again(av_file, monkeypatch):
    files = [av_file(f"lru{i}.mp4", duration=2.5, fps=10) for i in range(3)]
    calls: list[str] = []
    real = _pyav.probe_container

    def counting(path: str, container: Any) -> Any:
        calls.append(path)
        return real(path, container)

    monkeypatch.setattr(_pyav, "probe_container", counting)
    rows = [ManifestRow(path=t.path, start=0.0, end=2.5) for t in files]
    ds = AVClipDataset(rows, clip=ClipSpec(2, 0.5), fps=8, frame_size=32, mode="uniform", clips_per_row=2,
                       max_open_files=1, label_column=None)
    for i in list(range(len(ds))) * 2:  # each item reopens its file (one open file at a time)
        ds[i]
    assert sorted(calls) == sorted(t.path for t in files)


# ------------------------------------------------------------------------------------------ swscale output
@pytest.mark.parametrize("src,dst", [((640, 480), (149, 112)), ((96, 64), (48, 32)), ((128, 72), (57, 32)),
                                     ((160, 120), (200, 150)), ((64, 48), (63, 47)), ((640, 480), (160, 120))])
def test_scaled_rgb_is_as_close_to_full_size_resizing_as_packed_rgb(tmp_path, src, dst):
    """Scaling in swscale to planar RGB (what the reader does) is as faithful as to packed rgb24: both within two
    grey levels of converting at full size and resizing with antialiasing (the path it replaces)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    truth = make_av_file(tmp_path / "s.mp4", size=src, duration=0.5)
    rf = av.video.reformatter.VideoReformatter()
    with av.open(truth.path) as c:
        for frame in itertools.islice(c.decode(video=0), 3):
            full = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
            ref = TF.resize(full, [dst[1], dst[0]], interpolation=InterpolationMode.BILINEAR, antialias=True)
            ref_np = ref[0].permute(1, 2, 0).numpy().astype(np.float64)
            packed = frame.reformat(width=dst[0], height=dst[1], format="rgb24", interpolation="BILINEAR")
            got = _pyav.frame_to_rgb(frame, dst[0], dst[1], 0, rf)
            assert got.shape == (dst[1], dst[0], 3) and got.dtype == np.uint8
            err, err_packed = np.abs(got - ref_np).mean(), np.abs(packed.to_ndarray() - ref_np).mean()
            assert err < 2.0 and err <= err_packed + 0.5, (err, err_packed)


# ------------------------------------------------------------------------------- unshown pictures skipped
SKIP_FILES = [
    ("skip_h264_30.mp4", dict(fps=30, size=(128, 96))),
    ("skip_vfr.mp4", dict(fps=25, vfr=True, size=(128, 96))),
    ("skip_h264_7s.mkv", dict(fps=24, vcodec="h264", start_pts_offset=7.0, size=(128, 96))),
    ("skip_60.mp4", dict(fps=60, size=(128, 72), audio_offset=0.2)),
    ("skip_gop5.mp4", dict(fps=25, gop=5, size=(96, 64))),
]


@pytest.mark.parametrize("name,kw", SKIP_FILES, ids=[n for n, _ in SKIP_FILES])
def test_skipping_unshown_pictures_changes_no_frame(av_file, monkeypatch, name, kw):
    truth = av_file(name, duration=4.0, **kw)
    decoded = {True: 0, False: 0}
    real = _pyav.decode_packets
    state = {"flag": False}

    def counting(*args: Any, **kwargs: Any) -> Any:
        for packet, frames in real(*args, **kwargs):
            decoded[state["flag"]] += len(frames)
            yield packet, frames

    monkeypatch.setattr(_pyav, "decode_packets", counting)
    rng = np.random.default_rng(len(name))
    reader = MediaReader(truth.path)
    for k in range(24):
        start = float(rng.uniform(-0.2, 3.0))
        dur = float(rng.uniform(0.2, min(1.4, 3.8 - start)))  # inside the video (no audio is read)
        fps = float(rng.choice([5, 8, 10, 15, 24, 30]))
        targets = np.sort(rng.uniform(max(start, 0.0), start + dur - 1e-3, int(rng.integers(1, 9))))
        wins = []
        for flag in (False, True):
            state["flag"] = flag
            monkeypatch.setattr(_pyav, "SKIP_UNSHOWN", flag)
            if k % 2:
                wins.append(reader.read(start, dur, fps=fps, size=32, modalities=("video",)))
            else:
                wins.append(reader.read(start, dur, frame_times=targets, size=32, modalities=("video",)))
        a, b = wins
        for field in ("frames", "frame_times", "source_frame_times", "frames_valid"):
            assert torch.equal(getattr(a, field), getattr(b, field)), (k, field)
    reader.close()
    if name.endswith(".mp4"):  # (Matroska packets carry no dts here: nothing is skipped, conservatively)
        assert decoded[True] < decoded[False]  # B-pictures nobody shows were not decoded


# --------------------------------------------------------------------------------------------- decode_size
def test_decode_size_rule():
    ev = VideoTransform(112, train=False)
    assert decode_size(ev, 480, 640) == 112 and decode_size(ev, 640, 480) == 112
    assert decode_size(ev, 100, 200) is None  # never scaled up
    assert decode_size(VideoTransform((112, 224), train=False), 480, 640) == 168  # the width must reach 224
    full = VideoTransform(112, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert decode_size(full, 480, 640) == 112  # the demo's augmentation: a centred square of the short side
    quarter = VideoTransform(100, train=True, scale=(0.25, 1.0), ratio=(1.0, 1.0))
    assert decode_size(quarter, 1000, 1000) == 200  # the smallest box is half the side
    assert decode_size(lambda x: x, 480, 640) is None  # an unknown transform: full size


@pytest.mark.parametrize("size,train,scale,ratio,hw", [
    (112, False, (1.0, 1.0), (1.0, 1.0), (480, 640)),
    (64, True, (0.2, 1.0), (3 / 4, 4 / 3), (480, 640)),
    (64, True, (0.5, 1.0), (1.0, 1.0), (640, 360)),
    ((48, 96), True, (0.3, 0.9), (0.5, 2.0), (300, 500)),
    (32, True, (1.0, 1.0), (1.0, 1.0), (120, 160)),
])
def test_every_crop_box_at_the_decode_size_still_covers_the_output(size, train, scale, ratio, hw):
    """At the decode size, no crop box the transform draws is smaller than its output (one pixel of rounding)."""
    t = VideoTransform(size, train=train, scale=scale, ratio=ratio)
    h, w = hw
    s = decode_size(t, h, w)
    assert s is not None and s < min(h, w)
    dh, dw = (s, round(w * s / h)) if h <= w else (round(h * s / w), s)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        p = t.sample_params(dh, dw, g)
        assert p.height >= t.size[0] - 1 and p.width >= t.size[1] - 1, (p, dh, dw)


@pytest.mark.parametrize("frame_size,mode,rotation,src", [
    (32, "uniform", 0, (160, 120)), (48, "uniform", 90, (160, 120)), (32, "random", 0, (128, 96)),
    (48, "random", 270, (160, 90)), (40, "uniform", 180, (120, 160)),
])
def test_decode_size_auto_matches_full_size_decoding(tmp_path, frame_size, mode, rotation, src):
    """``decode_size="auto"`` decodes smaller pictures and the dataset's tensors stay within interpolation
    tolerance of the full-size path (same crops, same frames)."""
    truth = make_av_file(tmp_path / "d.mp4", size=src, rotation=rotation, duration=3.0, fps=25)
    row = ManifestRow(path=truth.path, start=0.0, end=3.0)
    train = mode == "random"
    kw = dict(clip=ClipSpec(2, 0.5), fps=8, frame_size=frame_size, fbank=FbankConfig(num_mel_bins=32), mode=mode,
              clips_per_row=3, label_column=None, seed=3,
              video_transform=VideoTransform(frame_size, train=train, scale=(0.35, 1.0) if train else (1.0, 1.0),
                                             ratio=(3 / 4, 4 / 3) if train else (1.0, 1.0), hflip_p=0.5))
    full = AVClipDataset([row], decode_size=None, **kw)
    auto = AVClipDataset([row], decode_size="auto", **kw)
    for i in range(len(full)):
        win_full, _, _ = full.read_window(i)
        win_auto, _, _ = auto.read_window(i)
        assert torch.equal(win_full.source_frame_times, win_auto.source_frame_times)
        assert min(win_auto.frames.shape[1:3]) < min(win_full.frames.shape[1:3])  # decoded smaller
        a, b = full[i], auto[i]
        assert a["video"].shape == b["video"].shape and torch.equal(a["audio"], b["audio"])
        std = torch.tensor(kw["video_transform"].std).view(3, 1, 1, 1)
        diff = (a["video"] - b["video"]).abs() * std * 255  # back to grey levels
        assert float(diff.mean()) < 4.0, float(diff.mean())  # measured 1.1-2.7 (docs/decoders.md)


def test_decode_size_is_validated():
    row = ManifestRow(path="/nonexistent.mp4", start=0.0, end=3.0)
    for bad in ("big", 0, -3, 1.5, True):
        with pytest.raises(ValueError, match="decode_size"):
            AVClipDataset([row], clip=ClipSpec(1, 0.5), decode_size=bad)


def test_read_av_window_reads_rotated_files_like_media_reader(av_file):
    truth = av_file("rot_rw.mkv", rotation=90, vcodec="h264", duration=1.5)
    a = read_av_window(truth.path, 0.2, 1.0, fps=8, size=32)
    with media_mod.MediaReader(truth.path) as r:
        b = r.read(0.2, 1.0, fps=8, size=32)
    assert torch.equal(a.frames, b.frames) and a.frames.shape[1:3] == (48, 32)


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_rotation_of_a_container_opened_from_memory(av_file, ext):
    """A container held in memory (a shard sample) gives its header to the rotation reader as a file object."""
    import io

    truth = av_file(f"mem_rot.{ext}", rotation=270, vcodec="h264", duration=0.6)
    data = io.BytesIO(open(truth.path, "rb").read())
    with av.open(io.BytesIO(data.getvalue())) as c:
        data.seek(5)
        info = _pyav.probe_container("<memory>", c, fileobj=data)
        assert info.video.rotation == 270 and data.tell() == 5
