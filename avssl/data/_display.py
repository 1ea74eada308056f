"""A video stream's display rotation read from the container's header bytes, without decoding a frame.

PyAV 18 exposes the display matrix only on decoded frames (``VideoFrame.rotation``), and the legacy ``rotate``
tag is gone from recent FFmpeg. The two container families that carry a stream-level display matrix are read
here the way FFmpeg's demuxers read them:

- ISO BMFF (MP4, MOV, 3GP, M4V): the track header's (``moov/trak/tkhd``) matrix times the movie header's
  (``moov/mvhd``) matrix, as ``libavformat/mov.c`` combines them; the track is matched by ``track_ID``
  (``AVStream.id``), else by its order;
- Matroska / WebM: ``Tracks/TrackEntry/Video/Projection`` with a rectangular projection, whose
  ``ProjectionPoseRoll`` (and a yaw of 180 degrees: a mirror) FFmpeg turns into a display matrix
  (``libavformat/matroskadec.c``); the track is matched by its order among the track entries (when there are as
  many entries as streams).

The rotation is then computed from the matrix as ``av_display_rotation_get`` does (flips ignored, as there).
Only the boxes/elements on the way are read (a few small reads and seeks, however long the file).
``None`` means "not known from the header" (another container, a header this reader does not follow, a damaged
file): the caller then falls back to decoding a frame.
"""

from __future__ import annotations

import math
import struct
from typing import BinaryIO

__all__ = ["MOV_FORMATS", "MATROSKA_FORMATS", "header_rotation", "rotation_from_matrix"]

MOV_FORMATS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2"})
MATROSKA_FORMATS = frozenset({"matroska", "webm"})
_MAX_BOXES = 4096  # bound on boxes/elements visited at one level (a damaged file cannot loop for long)

Matrix = tuple[float, float, float, float, float, float, float, float, float]


def rotation_from_matrix(m: Matrix) -> float | None:
    """Counter-clockwise degrees of a row-major 3x3 display matrix ``a b u / c d v / x y w`` (the value of FFmpeg's
    ``av_display_rotation_get``, in [-180, 180]); ``None`` for a singular matrix."""
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0.0 or scale1 == 0.0:
        return None
    return -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))


def header_rotation(f: BinaryIO, format_names: str, stream_index: int, stream_id: int,
                    num_streams: int) -> float | None:
    """Display rotation (counter-clockwise degrees, unrounded) of stream ``stream_index`` (FFmpeg's ``id``
    ``stream_id``, one of ``num_streams``) of the open binary file ``f`` whose FFmpeg format name list is
    ``format_names`` (``"mov,mp4,m4a,3gp,3g2,mj2"``); 0 when the header holds no matrix for it, ``None`` when the
    header cannot tell (see the module docstring)."""
    names = set(format_names.split(","))
    try:
        if names & MOV_FORMATS:
            return _mov_rotation(f, stream_index, stream_id)
        if names & MATROSKA_FORMATS:
            return _matroska_rotation(f, stream_index, num_streams)
    except (OSError, ValueError, struct.error, OverflowError):
        return None
    return None


# ------------------------------------------------------------------------------------------------ ISO BMFF
def _file_size(f: BinaryIO) -> int:
    pos = f.tell()
    end = f.seek(0, 2)
    f.seek(pos)
    return end


def _boxes(f: BinaryIO, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """``(type, payload start, box end)`` of the boxes in ``[start, end)``."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end and len(out) < _MAX_BOXES:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            break
        size, kind = struct.unpack(">I4s", head)
        body = pos + 8
        if size == 1:
            large = f.read(8)
            if len(large) < 8:
                break
            size = struct.unpack(">Q", large)[0]
            body = pos + 16
        elif size == 0:
            size = end - pos
        if size < body - pos:
            break  # damaged
        out.append((kind, body, min(pos + size, end)))
        pos += size
    return out


def _read_matrix(f: BinaryIO) -> Matrix:
    """A 36-byte ISO BMFF matrix: 16.16 fixed point, the third column 2.30."""
    v = struct.unpack(">9i", f.read(36))
    return tuple(float(x) / (1 << 30 if i % 3 == 2 else 1 << 16) for i, x in enumerate(v))  # type: ignore[return-value]


def _mvhd_matrix(f: BinaryIO, body: int) -> Matrix:
    f.seek(body)
    version = f.read(1)[0]
    # version, flags; creation, modification (4 or 8 bytes each); timescale; duration (4 or 8); rate; volume;
    # 10 reserved bytes
    f.seek(body + 4 + (28 if version == 1 else 16) + 4 + 2 + 10)
    return _read_matrix(f)


def _tkhd(f: BinaryIO, body: int) -> tuple[int, Matrix]:
    f.seek(body)
    version = f.read(1)[0]
    times = 16 if version == 1 else 8  # creation, modification
    f.seek(body + 4 + times)
    track_id = struct.unpack(">I", f.read(4))[0]
    # reserved 4, duration (4 or 8), reserved 8, layer 2, alternate group 2, volume 2, reserved 2
    f.seek(body + 4 + times + 4 + 4 + (8 if version == 1 else 4) + 8 + 8)
    return track_id, _read_matrix(f)


def _multiply(a: Matrix, b: Matrix) -> Matrix:
    return tuple(sum(a[3 * i + e] * b[3 * e + j] for e in range(3)) for i in range(3) for j in range(3))  # type: ignore[return-value]


def _mov_rotation(f: BinaryIO, stream_index: int, stream_id: int) -> float | None:
    end = _file_size(f)
    moov = next(((b, e) for kind, b, e in _boxes(f, 0, end) if kind == b"moov"), None)
    if moov is None:
        return None  # e.g. a compressed or missing movie box: let FFmpeg tell
    movie: Matrix = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    tracks: list[tuple[int, Matrix]] = []
    for kind, b, e in _boxes(f, *moov):
        if kind == b"mvhd":
            movie = _mvhd_matrix(f, b)
        elif kind == b"trak":
            tkhd = next(((tb, te) for k, tb, te in _boxes(f, b, e) if k == b"tkhd"), None)
            if tkhd is None:
                return None
            tracks.append(_tkhd(f, tkhd[0]))
    match = [m for tid, m in tracks if tid == stream_id]
    if len(match) == 1:
        matrix = match[0]
    elif 0 <= stream_index < len(tracks):
        matrix = tracks[stream_index][1]
    else:
        return None
    rotation = rotation_from_matrix(_multiply(matrix, movie))
    return 0.0 if rotation is None else rotation


# ------------------------------------------------------------------------------------------------ Matroska
_EBML, _SEGMENT, _SEEKHEAD, _SEEK, _SEEK_ID, _SEEK_POS = 0x1A45DFA3, 0x18538067, 0x114D9B74, 0x4DBB, 0x53AB, 0x53AC
_TRACKS, _TRACK_ENTRY, _TRACK_TYPE, _VIDEO, _CLUSTER = 0x1654AE6B, 0xAE, 0x83, 0xE0, 0x1F43B675
_PROJECTION, _PROJ_TYPE, _PROJ_PRIVATE, _PROJ_YAW, _PROJ_PITCH, _PROJ_ROLL = (
    0x7670, 0x7671, 0x7672, 0x7673, 0x7674, 0x7675)
_UNKNOWN = -1


def _vint(f: BinaryIO, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer: (value, bytes read); sizes with every value bit set are ``_UNKNOWN``."""
    first = f.read(1)
    if not first:
        raise ValueError("end of file")
    b0 = first[0]
    length = 1
    while length <= 8 and not b0 & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise ValueError("bad EBML integer")
    rest = f.read(length - 1)
    if len(rest) < length - 1:
        raise ValueError("end of file")
    value = b0 if keep_marker else b0 & (0xFF >> length)
    for c in rest:
        value = (value << 8) | c
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return _UNKNOWN, length
    return value, length


def _elements(f: BinaryIO, start: int, end: int) -> list[tuple[int, int, int]]:
    """``(id, payload start, payload end)`` of the EBML elements in ``[start, end)``; an element of unknown size
    ends the list (it is returned with ``end`` as its end)."""
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < end and len(out) < _MAX_BOXES:
        f.seek(pos)
        try:
            eid, n1 = _vint(f, keep_marker=True)
            size, n2 = _vint(f, keep_marker=False)
        except ValueError:
            break
        body = pos + n1 + n2
        if size == _UNKNOWN:
            out.append((eid, body, end))
            break
        out.append((eid, body, min(body + size, end)))
        pos = body + size
    return out


def _uint(f: BinaryIO, b: int, e: int) -> int:
    f.seek(b)
    return int.from_bytes(f.read(e - b), "big")


def _float(f: BinaryIO, b: int, e: int) -> float:
    f.seek(b)
    data = f.read(e - b)
    if len(data) == 4:
        return float(struct.unpack(">f", data)[0])
    if len(data) == 8:
        return float(struct.unpack(">d", data)[0])
    return 0.0


def _projection_rotation(f: BinaryIO, b: int, e: int) -> float:
    """What FFmpeg's ``mkv_create_display_matrix`` makes of a Projection element, as a rotation."""
    kind, yaw, pitch, roll, private = 0, 0.0, 0.0, 0.0, b""
    for eid, pb, pe in _elements(f, b, e):
        if eid == _PROJ_TYPE:
            kind = _uint(f, pb, pe)
        elif eid == _PROJ_YAW:
            yaw = _float(f, pb, pe)
        elif eid == _PROJ_PITCH:
            pitch = _float(f, pb, pe)
        elif eid == _PROJ_ROLL:
            roll = _float(f, pb, pe)
        elif eid == _PROJ_PRIVATE:
            f.seek(pb)
            private = f.read(min(pe - pb, 1))
    if kind != 0 or (private and private[0] != 0):
        return 0.0  # spherical projections carry no display matrix
    if pitch != 0.0 or yaw not in (0.0, 180.0, -180.0) or math.isnan(roll) or (yaw == 0.0 and roll == 0.0):
        return 0.0
    hflip = yaw != 0.0
    angle = roll * (2 * hflip - 1)  # what FFmpeg hands av_display_rotation_set (its angle is clockwise)
    rad = -math.radians(angle)
    c, s = math.cos(rad), math.sin(rad)
    m = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0]
    if hflip:
        m[0], m[3], m[6] = -m[0], -m[3], -m[6]
    rotation = rotation_from_matrix(tuple(m))  # type: ignore[arg-type]
    return 0.0 if rotation is None else rotation


def _matroska_rotation(f: BinaryIO, stream_index: int, num_streams: int) -> float | None:
    end = _file_size(f)
    top = _elements(f, 0, end)
    if not top or top[0][0] != _EBML:
        return None
    segment = next(((b, e) for eid, b, e in top if eid == _SEGMENT), None)
    if segment is None:
        return None
    tracks = None
    seek_tracks = None
    for eid, b, e in _elements(f, *segment):
        if eid == _TRACKS:
            tracks = (b, e)
            break
        if eid == _SEEKHEAD:
            for sid, sb, se in _elements(f, b, e):
                if sid != _SEEK:
                    continue
                fields = {k: (kb, ke) for k, kb, ke in _elements(f, sb, se)}
                if _SEEK_ID in fields and _SEEK_POS in fields:
                    f.seek(fields[_SEEK_ID][0])
                    if f.read(fields[_SEEK_ID][1] - fields[_SEEK_ID][0]) == _TRACKS.to_bytes(4, "big"):
                        seek_tracks = segment[0] + _uint(f, *fields[_SEEK_POS])
        if eid == _CLUSTER:
            break
    if tracks is None and seek_tracks is not None:
        found = _elements(f, seek_tracks, segment[1])[:1]
        if found and found[0][0] == _TRACKS:
            tracks = (found[0][1], found[0][2])
    if tracks is None:
        return None
    entries = [(b, e) for eid, b, e in _elements(f, *tracks) if eid == _TRACK_ENTRY]
    if len(entries) != num_streams or not 0 <= stream_index < len(entries):
        return None  # FFmpeg left a track out (or added one): the order does not tell which entry is which
    kids = _elements(f, *entries[stream_index])
    types = [_uint(f, b, e) for eid, b, e in kids if eid == _TRACK_TYPE]
    if types != [1]:  # not a video track: the streams and the entries do not line up
        return None
    for eid, b, e in kids:
        if eid == _VIDEO:
            for vid, vb, ve in _elements(f, b, e):
                if vid == _PROJECTION:
                    return _projection_rotation(f, vb, ve)
    return 0.0
