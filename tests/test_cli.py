"""The `avssl-train` Hydra app: runs from any folder, prints checkpoint and metrics, rejects typos, sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import console_script

REPO = Path(__file__).resolve().parents[1]
FAST = ["debug=[tiny,fast_dev_run]", "data.num_workers=0", "data.persistent_workers=false"]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AVSSL_CACHE"] = str(cache)
    env["MPLBACKEND"] = "Agg"
    env["HYDRA_FULL_ERROR"] = "0"
    return env


def _train_cmd() -> list[str]:
    return [console_script("avssl-train")]  # the installed executable, as users run it


def _run(args: list[str], cwd: Path, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_train_cmd(), *args], cwd=cwd, env=_env(cache), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avssl_cache")


def test_print_config_from_another_folder(tmp_path: Path, cache: Path):
    proc = _run(["--cfg", "job", "experiment=masked_av", "model=cnn"], tmp_path, cache)
    assert proc.returncode == 0, proc.stderr
    assert "joint_mae: 1.0" in proc.stdout and "name: r3d_tiny" in proc.stdout


def test_misspelt_override_fails_naming_the_key(tmp_path: Path, cache: Path):
    proc = _run(["trainer.max_epoch=3"], tmp_path, cache)
    assert proc.returncode != 0
    assert "trainer.max_epoch" in proc.stderr
    proc = _run(["optimizer.lr=fast"], tmp_path, cache)
    assert proc.returncode != 0
    assert "optimizer.lr" in proc.stderr and "fast" in proc.stderr


def test_run_prints_checkpoint_and_metrics(tmp_path: Path, cache: Path):
    proc = _run(["debug=tiny", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "data.num_workers=0",
                 "data.persistent_workers=false"], tmp_path, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint (last):" in proc.stdout and "val/sync_acc = " in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.startswith("checkpoint (last):"))
    ckpt = Path(line.split(":", 1)[1].strip())
    assert ckpt.is_file() and tmp_path in ckpt.parents  # Hydra's job folder under the working directory


def test_multirun_sweep(tmp_path: Path, cache: Path):
    proc = _run(["-m", "seed=0,1", *FAST], tmp_path, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "multirun").rglob("config.json"))
    assert len(jobs) == 2
    assert proc.stdout.count("val/sync_acc = ") == 2


@pytest.mark.slow
def test_installed_wheel_finds_its_configs(tmp_path: Path, cache: Path):
    """Build a wheel, unpack it, and run the app from an unrelated folder with only the wheel on the path."""
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(dist), str(REPO)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr[-500:]}")
    wheel = next(dist.glob("avssl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    # conf/ and data_tools/ are real folders at the root (not links into avssl/), shipped as avssl.conf and
    # avssl.data_tools: every YAML and module of them is in the wheel
    assert (REPO / "conf").is_dir() and not (REPO / "conf").is_symlink() and not (REPO / "avssl" / "conf").exists()
    assert (REPO / "data_tools").is_dir() and not (REPO / "data_tools").is_symlink()
    for folder, package in (("conf", "avssl/conf"), ("data_tools", "avssl/data_tools")):
        files = [p for p in (REPO / folder).rglob("*") if p.suffix in (".yaml", ".py") and "__pycache__" not in p.parts]
        assert files
        for p in files:
            assert f"{package}/{p.relative_to(REPO / folder).as_posix()}" in names, p
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(cache)
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", "import avssl.cli.train as t, sys; sys.argv[0] = 'avssl-train'; "
                           "t.main()", *FAST], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/sync_acc = " in proc.stdout
