"""Every console script avssl installs runs as the installed executable, from a folder outside the repository
(issue 11 item 2: `avssl-prep` failed with "Primary config module 'avssl.conf.prep' not found" after pip install,
while the tests called `python -m`, which resolves configs differently)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import console_script

sys.path.insert(0, str(Path(__file__).parent))
from fake_saycam import FakeFile, make_fake_saycam  # noqa: E402
from test_export import fake_checkpoint  # noqa: E402

DOCUMENTED = ("avssl-train", "avssl-prep", "avssl-export", "avssl-extract", "avssl-eval", "avssl-shards")


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the installed package
    env.update(MPLBACKEND="Agg", HYDRA_FULL_ERROR="0", AVSSL_CACHE=str(cwd / "cache"))
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_every_installed_script_is_documented_and_starts(tmp_path: Path):
    ours = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("avssl.")}
    assert set(DOCUMENTED) <= ours
    for name in sorted(ours):
        proc = _run([console_script(name), "--help"], tmp_path)
        assert "usage" in proc.stdout.lower() or "powered by hydra" in proc.stdout.lower(), name


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unrelated working folder (never the repository) holding small media made here."""
    work = tmp_path_factory.mktemp("outside")
    assert not str(work).startswith(str(Path(__file__).resolve().parents[1]))
    return work


def test_prep_then_shards(work: Path):
    root = make_fake_saycam(work / "saycam", (FakeFile("S/S_20130417_0600_01.mp4", 5.0, 25),
                                              FakeFile("A/A_20140302_1100_02.mp4", 5.0, 30, audio_delay=0.5)))
    out = work / "prep"
    _run([console_script("avssl-prep"), f"src={root / 'media'}", f"out={out}", "dataset=saycam",
          "segment.length_s=2.5", "segment.min_length_s=2.0", "normalise.short_side=32", "workers=1", "progress=false",
          "split.fractions={train: 0.5, val: 0.5, test: 0.0}"], work)
    manifest = out / "manifest.csv"
    assert manifest.is_file() and (out / "report" / "report.md").is_file()
    _run([console_script("avssl-shards"), str(manifest), "--out", str(work / "shards"), "--size", "32",
          "--fps", "8", "--splits", "train,val", "--max-segment-duration", "2.5"], work)
    index = json.loads((work / "shards" / "index.json").read_text())
    assert sum(sh["num_samples"] for s in index["splits"].values() for sh in s["shards"]) > 0
    proc = _run([console_script("avssl-shards"), "--inspect", str(work / "shards")], work)
    assert "samples" in proc.stdout


def test_export_extract_eval(work: Path):
    from avssl.data_tools.demo import make_demo_dataset

    manifest = make_demo_dataset(work / "demo", num_videos=4, duration=3.0, size=48, fps=16, val_fraction=0.5)
    fake_checkpoint(work / "m.ckpt", "cnn")
    _run([console_script("avssl-export"), str(work / "m.ckpt"), "--out", str(work / "export")], work)
    assert (work / "export" / "video" / "config.json").is_file()
    _run([console_script("avssl-extract"), str(work / "export"), str(work / "demo"), "--out", str(work / "feat"),
          "--no-progress"], work)
    assert list((work / "feat").rglob("*.npz"))
    proc = _run([console_script("avssl-eval"), f"checkpoint={work / 'export'}", "data.source=manifest",
                 f"data.path={manifest}", "data.eval_split=null", "tasks=[retrieval]", "progress=false",
                 f"output_dir={work / 'eval'}"], work)
    assert "results:" in proc.stdout
    assert "retrieval" in json.loads((work / "eval" / "results.json").read_text())
