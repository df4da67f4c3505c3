"""The one codec of checkpoints: binary, versioned, arrays as arrays.

A checkpoint part (a partition's shard, or the process-wide counters) is a tree of dicts, lists,
strings, numbers and numpy arrays. It is written as msgpack with each array as an extension
holding its dtype, shape and compressed bytes, and the whole is prefixed by a magic and the
format version. A reader refuses any other version, saying what to do.

Float arrays whose values are short decimals (JSON logs carry numbers like 12.345 or 0.00417)
are stored as integers scaled by a power of ten, delta-coded: exact (int / 10^d is the float the
decimal parses to), and several times smaller than raw float bits once compressed. Any other
array is stored as its bytes, byte-shuffled (the high bytes of similar numbers compress well).

Layout: magic, version, the length of the compressed tree, the tree (msgpack, zlib; an array in
it is an extension naming its blob), then the blobs, each length-prefixed. Blobs are compressed
each on its own, so the tree's compression does not go over them again.

An array a snapshot shares with earlier ones (`Chunked`: a drift bank's references, which change
rarely) is encoded in chunks of rows whose bytes are kept between checkpoints until its owner
marks a chunk changed: a checkpoint encodes what changed since the last one.

`encode` runs off the ingest loop, on the store's writer thread: numpy and zlib release the GIL
for large arrays, so most of it overlaps with ingestion on another core.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

MAGIC = b"IWCK"
# The format this inferwatch writes and reads. 2 was JSON (zlib-compressed), before issue 13.
VERSION = 3
_ARRAY, _CHUNKED = 1, 2  # msgpack extension codes: an array, an array in chunks of rows
# Rows per chunk of a `Chunked` array (a drift reference row is 8 KB at the default 1,000 values).
CHUNK_ROWS = 256
_RAW, _DECIMAL = 0, 1
# Powers of ten tried for the decimal form: 10^9 keeps integers of floats below ~9e6 exact.
MAX_DECIMALS = 9
# zlib level: 1 costs a fifth of level 6's time for ~10% more bytes on these arrays.
LEVEL = 1


class CodecError(ValueError):
    """Bytes that are not a checkpoint of this format."""


class Chunked(np.ndarray):
    """An array encoded in chunks of CHUNK_ROWS rows, each chunk's bytes kept in `encoded` (its
    owner's list, one entry per chunk: (rows, bytes) or None) until the owner sets it to None
    because a row in it changed. The owner changes neither while a write of it is in flight."""

    encoded: list[tuple[int, bytes] | None]


def chunked(a: npt.NDArray[Any], encoded: list[tuple[int, bytes] | None]) -> Chunked:
    view = a.view(Chunked)
    view.encoded = encoded
    return view


def encode(tree: Any) -> bytes:
    blobs: list[bytes] = []

    def blob(data: bytes) -> int:
        blobs.append(data)
        return len(blobs) - 1

    def hook(obj: Any) -> Any:
        if isinstance(obj, Chunked):
            parts = [blob(c) for c in _chunks(obj)]
            return msgspec.msgpack.Ext(_CHUNKED, msgspec.msgpack.encode([obj.dtype.str, list(obj.shape), parts]))
        if isinstance(obj, np.ndarray):
            return msgspec.msgpack.Ext(_ARRAY, msgspec.msgpack.encode(blob(_encode_array(obj))))
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"cannot put a {type(obj).__name__} in a checkpoint")

    tree_z = zlib.compress(msgspec.msgpack.encode(tree, enc_hook=hook), LEVEL)
    out = [MAGIC, bytes([VERSION]), len(tree_z).to_bytes(8, "big"), tree_z]
    for b in blobs:
        out += [len(b).to_bytes(8, "big"), b]
    return b"".join(out)


def _chunks(a: Chunked) -> list[bytes]:
    cache = a.encoded
    out = []
    for i, start in enumerate(range(0, len(a), CHUNK_ROWS)):
        rows = np.asarray(a[start : start + CHUNK_ROWS])
        if i == len(cache):
            cache.append(None)
        kept = cache[i]
        if kept is None or kept[0] != len(rows):
            kept = cache[i] = (len(rows), _encode_array(rows))
        out.append(kept[1])
    return out


def decode(data: bytes) -> Any:
    if data[:4] != MAGIC:
        if data[:1] in (b"{", b"x"):  # JSON, or zlib-compressed JSON: format 2
            raise CodecError(
                "it was written by an older inferwatch (format 2, JSON), which this one does not read; "
                "delete it to start afresh (state is rebuilt from new events)"
            )
        raise CodecError("it is not an inferwatch checkpoint")
    version = data[4]
    if version != VERSION:
        newer = "a newer" if version > VERSION else "an older"
        raise CodecError(
            f"it was written by {newer} inferwatch (format {version}); this one reads format {VERSION}: "
            "run the version that wrote it, or delete it to start afresh"
        )
    try:
        view = memoryview(data)
        size = int.from_bytes(view[5:13], "big")
        tree_z, at = view[13 : 13 + size], 13 + size
        blobs = []
        while at < len(view):
            n = int.from_bytes(view[at : at + 8], "big")
            if at + 8 + n > len(view):
                raise ValueError("truncated")
            blobs.append(view[at + 8 : at + 8 + n])
            at += 8 + n

        def hook(code: int, ext: memoryview) -> Any:
            if code == _ARRAY:
                return _decode_array(blobs[msgspec.msgpack.decode(ext)])
            if code == _CHUNKED:
                dtype, shape, parts = msgspec.msgpack.decode(ext)
                if not parts:
                    return np.zeros(shape, dtype=np.dtype(dtype))
                return np.concatenate([_decode_array(blobs[i]) for i in parts]).reshape(shape)
            raise ValueError(f"unknown extension {code}")

        return msgspec.msgpack.decode(zlib.decompress(tree_z), ext_hook=hook)
    except (zlib.error, msgspec.DecodeError, ValueError, IndexError, TypeError) as exc:
        raise CodecError(f"it is damaged ({exc})") from None


def _encode_array(a: npt.NDArray[Any]) -> bytes:
    a = np.ascontiguousarray(a)
    header: dict[str, Any] = {"dtype": a.dtype.str, "shape": list(a.shape)}
    if a.dtype == np.float64 and a.size:
        decimals = _decimals(a)
        if decimals is not None:
            ints = np.rint(a.ravel() * 10.0**decimals).astype(np.int64)
            deltas = np.diff(ints, prepend=np.int64(0))
            zigzag = ((deltas << 1) ^ (deltas >> 63)).view(np.uint64)
            width = _narrowest(zigzag)
            body = _shuffle(zigzag.astype(width))
            header.update(method=_DECIMAL, decimals=decimals, width=np.dtype(width).str)
            return _framed(header, body)
    header["method"] = _RAW
    return _framed(header, _shuffle(a.ravel()))


def _framed(header: dict[str, Any], body: bytes) -> bytes:
    head = msgspec.msgpack.encode(header)
    return len(head).to_bytes(2, "big") + head + zlib.compress(body, LEVEL)


def _decode_array(data: bytes | memoryview) -> npt.NDArray[Any]:
    size = int.from_bytes(data[:2], "big")
    header = msgspec.msgpack.decode(data[2 : 2 + size])
    body = zlib.decompress(data[2 + size :])
    shape = tuple(header["shape"])
    if header["method"] == _DECIMAL:
        zigzag = _unshuffle(body, np.dtype(header["width"])).astype(np.uint64)
        deltas = (zigzag >> np.uint64(1)).view(np.int64) ^ -(zigzag & np.uint64(1)).view(np.int64)
        ints = np.cumsum(deltas)
        out: npt.NDArray[Any] = (ints / 10.0 ** header["decimals"]).reshape(shape)
        return out
    return _unshuffle(body, np.dtype(header["dtype"])).reshape(shape).copy()


def _decimals(a: npt.NDArray[np.float64]) -> int | None:
    """The fewest decimals d <= MAX_DECIMALS with every value equal to round(v·10^d) / 10^d."""
    flat = a.ravel()
    if not np.isfinite(flat).all():
        return None
    sample = flat[:: max(1, len(flat) // 4096)]
    for d in range(MAX_DECIMALS + 1):
        scale = 10.0**d
        if np.abs(sample).max() * scale >= 2**53:
            return None
        if np.array_equal(np.rint(sample * scale) / scale, sample):
            # Verified on every value, not only the sample's.
            if np.array_equal(np.rint(flat * scale) / scale, flat) and np.abs(flat).max() * scale < 2**53:
                return d
            return None
    return None


def _narrowest(u: npt.NDArray[np.uint64]) -> type:
    top = int(u.max()) if len(u) else 0
    for t in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(t).max:
            return t
    return np.uint64


def _shuffle(a: npt.NDArray[Any]) -> bytes:
    """The array's bytes grouped by significance (all first bytes, then all second bytes, ...)."""
    if a.itemsize == 1:
        return a.tobytes()
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.itemsize).T).tobytes()


def _unshuffle(data: bytes, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    raw = np.frombuffer(data, dtype=np.uint8)
    if dtype.itemsize == 1:
        return raw.view(dtype)
    return np.ascontiguousarray(raw.reshape(dtype.itemsize, -1).T).view(dtype).ravel()
