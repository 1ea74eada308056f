"""Layers a reader can see (issue 10): nothing reaches upward, no import circles. Each layer is imported alone in
a fresh interpreter and must not pull in the layers above it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# layer -> modules it must never import (directly or through what it imports)
RULES = {
    "avssl.weights": ["avssl.models", "avssl.data", "avssl.objectives", "avssl.export", "avssl.lit", "lightning"],
    "avssl.convert": ["avssl.models", "avssl.data", "avssl.objectives", "avssl.export", "avssl.lit", "lightning"],
    "avssl.data": ["avssl.models", "avssl.objectives", "avssl.export", "avssl.lit", "avssl.data_tools", "lightning"],
    "avssl.data_tools": ["avssl.models", "avssl.objectives", "avssl.export", "avssl.lit", "lightning"],
    "avssl.models": ["avssl.objectives", "avssl.export", "avssl.lit", "avssl.data", "lightning"],
    "avssl.export": ["avssl.lit", "lightning", "hydra"],
    "avssl.evaluation.embed": ["avssl.lit", "lightning"],
}


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_nothing_above_it(layer: str, tmp_path):
    code = f"import json, sys, {layer}; print(json.dumps(sorted(sys.modules)))"
    # from an unrelated folder: the installed package, not the repository's avssl/ (which lacks conf/)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    above = [m for m in loaded for banned in RULES[layer] if m == banned or m.startswith(banned + ".")]
    assert not above, f"{layer} imports {above}"
