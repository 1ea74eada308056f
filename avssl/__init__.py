"""avssl: self-supervised learning from video with its sound.

Importing ``avssl`` is cheap and never imports Lightning. The reuse API is available at the top level:

>>> import avssl
>>> enc = avssl.load_encoder("bundle_dir", "audio")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_encoder": ("avssl.export", "load_encoder"),
    "create_encoder": ("avssl.models", "create_encoder"),
    "list_encoders": ("avssl.models", "list_encoders"),
    "probe": ("avssl.data", "probe"),
    "read_av_window": ("avssl.data", "read_av_window"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'avssl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["__version__", *_LAZY]
