"""Dataset preparation (``avssl-prep``): discover, probe, normalise, segment, flag, split, manifest, report.

Imports ``avssl.data`` only (never the models or Lightning). See docs/data_tools.md.
"""

from avssl.data_tools.discover import ProbeRecord, discover, probe_all
from avssl.data_tools.metadata import load_birthdates, load_transcripts, parse_filename, recording_metadata
from avssl.data_tools.normalise import NormaliseOptions, NormaliseResult, load_stats, normalise_recording
from avssl.data_tools.pipeline import STAGES, BadFile, InjectedFault, PrepResult, run_prep
from avssl.data_tools.quality import FLAGS, QualityOptions, segment_flags, segment_grid
from avssl.data_tools.splits import assign_split

__all__ = [
    "FLAGS",
    "STAGES",
    "BadFile",
    "InjectedFault",
    "NormaliseOptions",
    "NormaliseResult",
    "PrepResult",
    "ProbeRecord",
    "QualityOptions",
    "assign_split",
    "discover",
    "load_birthdates",
    "load_stats",
    "load_transcripts",
    "normalise_recording",
    "parse_filename",
    "probe_all",
    "recording_metadata",
    "run_prep",
    "segment_flags",
    "segment_grid",
]
