"""Moved to :mod:`avssl.objectives.build` (pretraining models and their decoders live with the objectives; models/
holds encoders and heads only). This alias keeps old imports working; it is not imported by ``avssl.models``."""

from avssl.objectives.build import *  # noqa: F403
from avssl.objectives.build import __all__  # noqa: F401
