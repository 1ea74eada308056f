"""Moved to :mod:`avssl.data_tools.stats` (dataset tools live with the data tools). This alias keeps old imports
working; ``avssl.data`` itself never imports it."""

from avssl.data_tools.stats import *  # noqa: F403
from avssl.data_tools.stats import __all__  # noqa: F401
