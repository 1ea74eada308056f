"""Every bad input raises the documented error type, naming the file, within seconds (checked in a subprocess
with a timeout so that a hang fails the test instead of blocking the suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from mediagen import make_garbage_file, make_truncated_copy

from avssl.data.errors import InvalidWindow, MediaError, MissingStreamError
from avssl.data.media import MediaReader, read_av_window

_RUNNER = textwrap.dedent(
    """
    import json, sys, time
    from avssl.data.media import read_av_window
    results = {}
    for key, path, start, duration in json.loads(sys.argv[1]):
        t0 = time.perf_counter()
        try:
            w = read_av_window(path, start, duration)
            res = {"ok": True, "frames": w.num_frames}
        except Exception as e:
            res = {"ok": False, "type": type(e).__name__, "msg": str(e),
                   "mro": [c.__name__ for c in type(e).__mro__]}
        res["seconds"] = time.perf_counter() - t0
        results[key] = res
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def bad_inputs(av_file, tmp_path_factory) -> dict:
    """Read every bad input in one subprocess (imports are slow on a shared machine); a hang hits the timeout."""
    d = tmp_path_factory.mktemp("bad")
    empty = d / "empty.mkv"
    empty.write_bytes(b"")
    cases = {
        "missing": (str(d / "nope.mp4"), 0.0, 1.0),
        "garbage": (make_garbage_file(d / "garbage.mp4"), 0.0, 1.0),
        "empty": (str(empty), 0.0, 1.0),
        "trunc_mp4": (make_truncated_copy(av_file("trunc.mp4").path, d / "trunc.mp4", 0.4), 2.0, 0.5),
        "trunc_mkv": (make_truncated_copy(av_file("trunc.mkv").path, d / "trunc.mkv", 0.4), 2.0, 0.5),
        "trunc_mkv_ok": (make_truncated_copy(av_file("trunc.mkv").path, d / "trunc_ok.mkv", 0.6), 0.2, 0.5),
    }
    arg = json.dumps([[k, *v] for k, v in cases.items()])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, arg], capture_output=True, text=True, timeout=120, env=env,
        cwd=tempfile.gettempdir(),  # not the repository root, whose avssl/ would shadow the installed package
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for key, (path, _, _) in cases.items():
        results[key]["path"] = path
    return results


@pytest.mark.parametrize(
    "key,error",
    [
        ("missing", "MediaNotFound"),
        ("garbage", "DecodeError"),
        ("empty", "DecodeError"),
        ("trunc_mp4", "DecodeError"),  # MP4 loses its index (moov at the end)
        ("trunc_mkv", "DecodeError"),  # Matroska: the window lies past the data that survived
    ],
)
def test_bad_input_raises_named_error_quickly(bad_inputs, key, error):
    res = bad_inputs[key]
    assert not res["ok"] and res["type"] == error, res
    assert res["path"] in res["msg"] and "MediaError" in res["mro"]
    assert res["seconds"] < 10.0
    if key == "missing":
        assert "FileNotFoundError" in res["mro"]


def test_truncated_matroska_keeps_the_readable_part(bad_inputs):
    res = bad_inputs["trunc_mkv_ok"]
    assert res["ok"] and res["frames"] > 0, res


def test_no_audio_stream(av_file):
    truth = av_file("silent.mp4", acodec=None)
    with pytest.raises(MissingStreamError, match="no audio"):
        read_av_window(truth.path, 0.0, 1.0)
    win = read_av_window(truth.path, 0.0, 1.0, allow_missing_audio=True)
    assert win.audio.shape == (16000,) and float(win.audio.abs().max()) == 0.0
    assert not win.audio_valid.any() and win.num_frames == 25


def test_no_video_stream(av_file):
    truth = av_file("audio_only.mkv", vcodec=None)
    with pytest.raises(MissingStreamError, match="no video") as e:
        read_av_window(truth.path, 0.0, 1.0)
    assert truth.path in str(e.value)


@pytest.mark.parametrize(
    "start,duration", [(5.0, 1.0), (-3.0, 1.0), (0.0, 0.0), (0.0, -1.0), (float("nan"), 1.0)]
)
def test_bad_windows(av_file, start, duration):
    truth = av_file("window.avi", duration=2.0)
    with pytest.raises(InvalidWindow) as e:
        read_av_window(truth.path, start, duration)
    assert truth.path in str(e.value) and isinstance(e.value, (MediaError, ValueError))


def test_bad_arguments(av_file):
    truth = av_file("window.avi", duration=2.0)
    with pytest.raises(ValueError, match="backend"):
        MediaReader(truth.path, backend="opencv")
    with pytest.raises(ValueError, match="size"):
        read_av_window(truth.path, 0.0, 1.0, size=(0, 10))
    with pytest.raises(InvalidWindow, match="fps"):
        read_av_window(truth.path, 0.0, 1.0, fps=-1)
