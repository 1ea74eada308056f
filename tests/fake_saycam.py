"""A tiny fake SAYCam tree (generated with PyAV, nothing downloaded) with known content for data_tools tests.

Every file is 64x48 px and a few seconds long. Picture: mid-grey with a bright-red block in the *upright* top-left
corner and a moving vertical bar (so the picture never freezes); white flashes at ``EVENTS``. Sound: a quiet hum plus
a loud 1 kHz beep at ``EVENTS`` (the same times on the file clock as the flashes). Files stored "upside down" (as
SAYCam's are) hold the picture rotated by 180 degrees. See ``FAKE_FILES`` for what each file holds.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

W, H = 64, 48
SR = 44100
EVENTS = (1.0, 3.0)  # flash + beep times, seconds on the file clock
FLASH_S = 0.2
BEEP_S = 0.15


@dataclass(frozen=True)
class FakeFile:
    rel: str
    duration: float
    fps: int
    upside_down: bool = True
    audio: bool = True
    audio_delay: float = 0.0  # audio stream starts this late (no audio before it)
    dark: tuple[float, float] | None = None  # black picture over [a, b)
    silent: tuple[float, float] | None = None  # digital silence over [a, b)
    truncate: bool = False  # cut the file to 40% of its bytes (container unreadable)
    video_codec: str = "libx264"
    extra: dict[str, str] = field(default_factory=dict)


FAKE_FILES: tuple[FakeFile, ...] = (
    FakeFile("S/S_20130417_0600_01.mp4", 5.0, 25),
    FakeFile("S/S_20130417_0600_02.mkv", 6.0, 30, dark=(2.5, 5.0)),  # 6 s: 2 full 2.5 s segments + 1 s tail
    FakeFile("S/S_20130501_0700_01.mov", 5.0, 24, silent=(2.5, 5.0), video_codec="mpeg4"),
    FakeFile("A/A_20140302_1100_01.mp4", 5.0, 30, audio=False),
    FakeFile("A/A_20140302_1100_02.mp4", 5.0, 30, audio_delay=0.5),
    FakeFile("Y/Y_20140610_0900_01.mp4", 5.0, 30, truncate=True),
    FakeFile("Y/Y_20140611_0900_01.mkv", 5.0, 15),
)
BIRTH_DATES = {"S": "2012-10-21", "A": "2013-05-02", "Y": "2013-11-30"}
# Time (s into the video), Speaker, Utterance, Video Name
TRANSCRIPT = (
    ("00:00:01", "MOT", "look at the ball", "S_20130417_0600_01"),
    ("00:00:03", "CHI", "ball", "S_20130417_0600_01"),
    ("4", "MOT", "where is it", "S_20130417_0600_02"),
)


def upright_picture(t: float, dark: bool = False) -> np.ndarray:
    """The upright frame at time ``t``: uint8 [H, W, 3]."""
    if dark:
        return np.zeros((H, W, 3), np.uint8)
    img = np.full((H, W, 3), 110, np.uint8)
    img[: H // 3, : W // 4] = (230, 20, 20)  # the asymmetric marker: upright top-left
    x = int((t * 20) % (W - 4))
    img[H // 2:, x:x + 4] = (20, 20, 230)  # moving bar (bottom half)
    if any(e <= t < e + FLASH_S for e in EVENTS):
        img[H // 3:, W // 4:] = 255
    return img


def sound(t: np.ndarray) -> np.ndarray:
    """Mono waveform at times ``t``: a quiet 150 Hz hum, loud 1 kHz beeps at EVENTS."""
    y = 0.05 * np.sin(2 * np.pi * 150 * t)
    for e in EVENTS:
        on = (t >= e) & (t < e + BEEP_S)
        y = y + on * 0.6 * np.sin(2 * np.pi * 1000 * (t - e))
    return y.astype(np.float32)


def _write(path: Path, f: FakeFile) -> None:
    fmt = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}[path.suffix]
    with av.open(str(path), "w", format=fmt, options={"fflags": "+bitexact"}) as out:
        vs = out.add_stream(f.video_codec, rate=f.fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.thread_count = 1
        if f.video_codec == "libx264":
            vs.codec_context.options = {"preset": "ultrafast", "x264-params": "threads=1"}
        aus = out.add_stream("aac", rate=SR, layout="stereo") if f.audio else None
        n = int(round(f.duration * f.fps))
        for k in range(n):
            t = k / f.fps
            dark = f.dark is not None and f.dark[0] <= t < f.dark[1]
            img = upright_picture(t, dark)
            if f.upside_down:
                img = np.ascontiguousarray(img[::-1, ::-1])
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = k, Fraction(1, f.fps)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if aus is not None:
            first = int(round(f.audio_delay * SR))
            total = int(round(f.duration * SR))
            t = np.arange(total) / SR
            y = sound(t)
            if f.silent is not None:
                y[(t >= f.silent[0]) & (t < f.silent[1])] = 0.0
            pos = first
            while pos < total:
                chunk = y[pos:pos + 1024]
                af = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = SR, pos, Fraction(1, SR)
                out.mux(aus.encode(af))
                pos += chunk.shape[0]
            out.mux(aus.encode(None))
    if f.truncate:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.4)])


def make_fake_saycam(root: str | Path, files: tuple[FakeFile, ...] = FAKE_FILES) -> Path:
    """Write the fake tree under ``root``: media in ``root/media/<child>/``, tables in ``root/tables/``."""
    root = Path(root)
    for f in files:
        p = root / "media" / f.rel
        p.parent.mkdir(parents=True, exist_ok=True)
        _write(p, f)
    (root / "media" / "README.txt").write_text("not media\n")
    tables = root / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    with open(tables / "birthdates.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["child", "birth_date"])
        w.writerows(sorted(BIRTH_DATES.items()))
    with open(tables / "transcripts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Time", "Speaker", "Utterance", "Video Name"])
        w.writerows(TRANSCRIPT)
    return root


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(make_fake_saycam(sys.argv[1] if len(sys.argv) > 1 else "fake_saycam"))
