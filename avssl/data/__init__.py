"""avssl.data: files, time and tensors. Imports no Lightning and nothing from avssl.models."""

from avssl.data.errors import DecodeError, InvalidWindow, MediaError, MediaNotFound, MissingStreamError
from avssl.data.media import probe, read_av_window
from avssl.data.types import AVWindow, MediaInfo, StreamInfo

__all__ = [
    "AVWindow",
    "DecodeError",
    "InvalidWindow",
    "MediaError",
    "MediaInfo",
    "MediaNotFound",
    "MissingStreamError",
    "StreamInfo",
    "probe",
    "read_av_window",
]
