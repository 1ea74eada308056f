"""One preprocessing path, exact over a grid of settings (issue 10).

For every model fps, segment duration and gap below, on a 60 fps video whose frames show their own index:
- every frame of every segment of an ``AVClipDataset`` item is the frame on screen at ``s_k + j / fps``;
- ``load_encoder(path, "video").preprocess(frames, times=..., start=..., num_segments=...)`` picks the same
  frames, and gives tensors identical to the dataset's for the same window, video and audio (validity included).
Before the redesign the dataset took the first frame at or after each segment start on the window's grid, so
segments lagged their audio by up to one frame whenever ``segment_duration * fps`` or the gap was not whole.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from mediagen import make_av_file, read_frame_index
from test_export import hparams

import avssl
from avssl import export as ex
from avssl.data.datasets import AVClipDataset
from avssl.data.features import FbankConfig
from avssl.data.manifest import ManifestRow
from avssl.data.media import read_av_window
from avssl.data.preprocess import PreprocessSpec, cut_audio
from avssl.data.sampling import ClipSpec
from avssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")

SRC_FPS, DURATION, SR = 60, 4.0, 16000
FPS = (8, 10, 15, 25, 30)
SEGMENTS = (0.3, 0.5, 0.64)
GAPS = (0.0, 0.1, -0.2)  # negative: overlapping segments (one every seg - 0.2 s), instants shared between them
FBANK = FbankConfig(num_mel_bins=32)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory):
    # 0.2 s late audio: the first segment's spectrogram is partly silence, masked the same way everywhere
    return make_av_file(tmp_path_factory.mktemp("grid") / "idx60.mp4", duration=DURATION, fps=SRC_FPS,
                        size=(128, 72), audio_offset=0.2, events=(0.7, 2.3))


def _raw(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 4, 1, 2, 3).float()  # [S, T, H, W, 3] uint8 -> [S, 3, T, H, W], no resizing


def _on_screen(truth, t: np.ndarray) -> np.ndarray:
    return np.searchsorted(truth.video_times, t + 1e-6, side="right") - 1


def _encoders(tmp: Path, fps: float, seg: float, gap: float):
    hp = hparams("cnn")
    pre = PreprocessSpec(segment_duration=seg, fps=float(fps), frame_size=(32, 32), sample_rate=SR,
                         fbank=FBANK, segment_gap=gap, num_segments=4, video_mean=IMAGENET_MEAN,
                         video_std=IMAGENET_STD).to_dict()
    hp["preprocessing"] = copy.deepcopy(pre)
    model = ex.build_pretrain_model(hp)
    path = tmp / f"m_{fps}_{seg}_{gap}.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "global_step": 1, "epoch": 0}, path)
    return avssl.load_encoder(path, "video"), avssl.load_encoder(path, "audio")


@pytest.mark.parametrize("fps,seg,gap", list(itertools.product(FPS, SEGMENTS, GAPS)))
def test_segments_show_the_frame_on_screen_and_match_preprocess(video, tmp_path, fps, seg, gap):
    row = ManifestRow(path=video.path, start=0.0, end=DURATION)
    clip = ClipSpec(num_segments=4, segment_duration=seg, segment_gap=gap)
    kw = dict(clip=clip, fps=fps, frame_size=32, sample_rate=SR, fbank=FBANK, mode="uniform", clips_per_row=3,
              label_column=None)
    raw = AVClipDataset([row], video_transform=_raw, **kw)
    ds = AVClipDataset([row], **kw)
    venc, aenc = _encoders(tmp_path, fps, seg, gap)
    t_per = round(seg * fps)
    for i in range(len(ds)):
        item, ref = raw[i], ds[i]
        starts = item["segment_starts"].numpy()
        assert np.allclose(np.diff(starts), seg + gap)
        targets = starts[:, None] + np.arange(t_per)[None, :] / fps
        got = np.array([[read_frame_index(item["video"][k, :, j].permute(1, 2, 0).to(torch.uint8).numpy())
                         for j in range(t_per)] for k in range(4)])
        assert (got == _on_screen(video, targets)).all(), (i, starts, got, _on_screen(video, targets))

        # preprocess from the source frames (native rate) picks the same frames ...
        # (from a frame period earlier: fps=None returns frames whose pts lie in the window, and the frame on
        # screen at the first instant may have started before it)
        lo = max(0.0, float(starts[0]) - 1.0 / SRC_FPS)
        native = read_av_window(video.path, lo, float(targets[-1, -1]) - lo + 0.05)
        x = venc.preprocess(native.frames, times=native.frame_times, start=float(starts[0]), num_segments=4)
        assert x.shape == ref["video"].shape
        assert torch.equal(x, ref["video"])
        # ... and from the dataset's own window gives identical tensors, video and audio
        win, v_starts, a_starts = ds.read_window(i)
        assert torch.equal(venc.preprocess(win.frames, times=win.frame_times, start=v_starts[0], num_segments=4),
                           ref["video"])
        a = aenc.preprocess(win.audio, sample_rate=win.sample_rate, audio_start=win.audio_start,
                            start=a_starts[0], num_segments=4, valid=win.audio_valid)
        assert torch.equal(a, ref["audio"])


@pytest.mark.parametrize("sr,seg,gap,start", [(16000, 0.3, 0.1, 0.0), (16000, 0.64, 0.0, 0.123456),
                                              (22050, 0.5, 0.1, 1.00003), (44100, 0.3, 0.0, 0.7071),
                                              (8000, 0.64, 0.1, 2.5), (16000, 0.5, -0.3, 0.31),
                                              (44100, 0.3, -0.25, 1.2345)])
def test_audio_segments_start_at_round_s_k_times_sr(sr, seg, gap, start):
    """Audio segment k is round(seg * sr) samples from file sample round(s_k * sr), wherever the window starts."""
    spec = PreprocessSpec(segment_duration=seg, fps=10.0, frame_size=(8, 8), sample_rate=sr,
                          fbank=FbankConfig(sample_rate=sr), segment_gap=gap, num_segments=4)
    starts = spec.segment_starts(start)
    for w0_samples in (0, round(start * sr) - 7, round(start * sr)):
        ramp = torch.arange(w0_samples, w0_samples + 6 * sr, dtype=torch.float64).float()  # value = file index
        wave, mask = cut_audio(spec, ramp, w0_samples / sr, starts)
        for k, s in enumerate(starts):
            first = round(s * sr)
            assert int(wave[k, 0]) == first and wave.shape[1] == round(seg * sr)
            assert torch.equal(wave[k], torch.arange(first, first + round(seg * sr), dtype=torch.float64).float())
        assert mask.all()
