"""Media fixtures: small files generated once per test session with tests/mediagen.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mediagen import MediaTruth, make_av_file  # noqa: E402


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def av_file(media_dir: Path) -> Callable[..., MediaTruth]:
    """``av_file(name, **make_av_file_kwargs)``: generate (once per session) and return the ground truth."""
    cache: dict[str, MediaTruth] = {}

    def make(name: str, **kwargs: Any) -> MediaTruth:
        key = name + json.dumps(kwargs, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = make_av_file(media_dir / name, **kwargs)
        return cache[key]

    return make


def console_script(name: str) -> str:
    """The INSTALLED console script ``name`` (beside this interpreter), as users run it: never ``python -m``.
    Missing means the package is not installed: run the suite with the README's ``bash scripts/test.sh``."""
    import shutil

    exe = Path(sys.executable).parent / name
    if exe.is_file():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} is not installed (pip install avssl, or bash scripts/test.sh)")
    return found


@pytest.fixture
def one_thread():
    """One intra-op torch thread for tests of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on the shared 2-core machine a second thread only adds contention (it made test_models ~30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
