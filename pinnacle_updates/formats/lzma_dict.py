"""Raw LZMA2 with a preset dictionary: the coder of ``solid`` deltas (``formats.delta_format``).

LZMA2 can start with a *preset dictionary*: bytes both sides already hold, which the first output
byte may already match. With the base release's files as that dictionary and the changed files of
the target as the data, it is a patch-from coder, and on source text it beats zstd's patch-from at
its highest level: typescript 5.5.4 -> 5.6.2 codes to 130 KB instead of 139 KB (measured, see
docs/DELTA-BENCHMARK.md), since LZMA models literals and repeated offsets better than zstd does.

Python's :mod:`lzma` does not expose ``preset_dict``, and no maintained binding on PyPI does, so this
module calls liblzma (the library Python's own ``lzma`` module is built on, present wherever xz-utils
is) through :mod:`ctypes`: ``lzma_raw_encoder``/``lzma_raw_decoder`` with one LZMA2 filter. When
liblzma cannot be loaded (:func:`available` is False) the publisher does not build this kind and a
client refuses such a delta with one line, falling back to the full artifact.

Both sides derive the dictionary size from lengths they know (:func:`dict_size`), so nothing about
the coder is stored; LZMA2 carries ``lc``/``lp``/``pb`` in its own first chunk. A decoder is given
exactly the output buffer the signed sizes allow, plus one byte to detect a stream that holds more.
"""

from __future__ import annotations

import ctypes
import functools
import lzma

from .delta_format import DeltaFormatError

DICT_MIN = 1 << 12
DICT_MAX = 1536 << 20
"""liblzma's bounds on an LZMA2 dictionary."""
DEPTH = 2000
"""Match finder search depth (preset 9e's default is about 150): 1% fewer bytes on typescript's
bundles, whose changed code matches many places of the old one, for about 30% more publish time;
deeper searches measured no better. The decoder does not depend on it."""
LITERAL_CONTEXT = 1
POSITION_BITS = 0
"""``lc``/``pb``: text has no 4-byte alignment to model; measured 0.5% smaller than preset 9e's
3/2 on typescript."""

_FILTER_LZMA2 = 0x21
_VLI_UNKNOWN = 2**64 - 1
_PRESET = 9 | lzma.PRESET_EXTREME
_RUN, _FINISH = 0, 3
_OK, _STREAM_END = 0, 1
_ERRORS = {5: "out of memory", 6: "memory limit", 7: "format error", 8: "unsupported options",
           9: "corrupt data", 10: "truncated data", 11: "internal error"}


class _Options(ctypes.Structure):
    """``lzma_options_lzma`` (lzma/lzma12.h, identical in size since liblzma 5.0)."""

    _fields_ = [
        ("dict_size", ctypes.c_uint32), ("preset_dict", ctypes.c_void_p), ("preset_dict_size", ctypes.c_uint32),
        ("lc", ctypes.c_uint32), ("lp", ctypes.c_uint32), ("pb", ctypes.c_uint32), ("mode", ctypes.c_int),
        ("nice_len", ctypes.c_uint32), ("mf", ctypes.c_int), ("depth", ctypes.c_uint32),
        ("reserved_int", ctypes.c_uint32 * 8), ("reserved_enum", ctypes.c_int * 4),
        ("reserved_ptr", ctypes.c_void_p * 2),
    ]


class _Filter(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("options", ctypes.c_void_p)]


class _Stream(ctypes.Structure):
    """``lzma_stream`` (lzma/base.h); all zero is ``LZMA_STREAM_INIT``."""

    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_size_t), ("total_in", ctypes.c_uint64),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_size_t), ("total_out", ctypes.c_uint64),
        ("allocator", ctypes.c_void_p), ("internal", ctypes.c_void_p), ("reserved_ptr", ctypes.c_void_p * 4),
        ("reserved_int", ctypes.c_uint64 * 2), ("reserved_size", ctypes.c_size_t * 2),
        ("reserved_enum", ctypes.c_int * 2),
    ]


_NAMES = ("liblzma.so.5", "liblzma.5.dylib", "liblzma.dylib")
"""Tried by soname first: ``ctypes.util.find_library`` runs ``ldconfig`` (milliseconds per client start)."""


@functools.cache
def _library() -> ctypes.CDLL | None:
    for name in _NAMES:
        if (lib := _load(name)) is not None:
            return lib
    import ctypes.util  # only when no soname loaded

    found = ctypes.util.find_library("lzma")
    return _load(found) if found else None


def _load(name: str) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(name)
        _declare(lib)
    except (OSError, AttributeError):
        return None
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    lib.lzma_lzma_preset.argtypes = [ctypes.POINTER(_Options), ctypes.c_uint32]
    lib.lzma_lzma_preset.restype = ctypes.c_uint8
    for name in ("lzma_raw_encoder", "lzma_raw_decoder"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(_Stream), ctypes.POINTER(_Filter)]
        fn.restype = ctypes.c_int
    lib.lzma_raw_encoder_memusage.argtypes = [ctypes.POINTER(_Filter)]
    lib.lzma_raw_encoder_memusage.restype = ctypes.c_uint64
    lib.lzma_code.argtypes = [ctypes.POINTER(_Stream), ctypes.c_int]
    lib.lzma_code.restype = ctypes.c_int
    lib.lzma_end.argtypes = [ctypes.POINTER(_Stream)]
    lib.lzma_end.restype = None


def available() -> bool:
    """Whether liblzma could be loaded here."""
    return _library() is not None


def dict_size(dictionary: int, size: int) -> int:
    """The LZMA2 dictionary for ``size`` output bytes after a ``dictionary``-byte preset: large enough
    for a match to reach any byte of either, within liblzma's bounds."""
    return min(DICT_MAX, max(DICT_MIN, dictionary + size))


Buffer = bytes | bytearray


def _address(buf: Buffer) -> int | None:
    """Where ``buf``'s bytes are (None when empty): liblzma reads or writes them in place, no copy."""
    if not buf:
        return None
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


class _Coder:
    """One raw LZMA2 filter chain with a preset dictionary, kept alive with its buffers."""

    def __init__(self, lib: ctypes.CDLL, dictionary: Buffer, size: int, encoder: bool) -> None:
        self.lib = lib
        self.options = _Options()
        if lib.lzma_lzma_preset(ctypes.byref(self.options), _PRESET):
            raise DeltaFormatError("liblzma rejects its own preset")
        self.dictionary = dictionary  # kept referenced: liblzma reads it through a pointer
        if len(dictionary) > DICT_MAX:
            raise DeltaFormatError(f"an LZMA dictionary of {len(dictionary)} bytes is over {DICT_MAX}")
        if dictionary:
            self.options.preset_dict = _address(dictionary)
            self.options.preset_dict_size = len(dictionary)
        self.options.dict_size = dict_size(len(dictionary), size)
        if encoder:
            self.options.lc, self.options.pb, self.options.depth = LITERAL_CONTEXT, POSITION_BITS, DEPTH
        self.filters = (_Filter * 2)(
            _Filter(_FILTER_LZMA2, ctypes.cast(ctypes.pointer(self.options), ctypes.c_void_p)),
            _Filter(_VLI_UNKNOWN, None),
        )

    def memory(self) -> int:
        return int(self.lib.lzma_raw_encoder_memusage(self.filters))

    def run(self, data: bytes, capacity: int, encoder: bool) -> tuple[bytearray, int, int]:
        """Code ``data`` in one call into at most ``capacity`` bytes: (output, liblzma's return,
        input bytes left unread)."""
        stream = _Stream()
        start = self.lib.lzma_raw_encoder if encoder else self.lib.lzma_raw_decoder
        ret = start(ctypes.byref(stream), self.filters)
        if ret != _OK:
            raise DeltaFormatError(f"liblzma cannot start the coder ({_ERRORS.get(ret, ret)})")
        out = bytearray(capacity)
        try:
            stream.next_in = _address(data)
            stream.avail_in = len(data)
            stream.next_out = _address(out)
            stream.avail_out = capacity
            ret = self.lib.lzma_code(ctypes.byref(stream), _FINISH)
            written, left = int(stream.total_out), int(stream.avail_in)
        finally:
            self.lib.lzma_end(ctypes.byref(stream))
        del out[written:]
        return out, ret, left


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise DeltaFormatError("liblzma is not available here (needed for solid deltas)")
    return lib


def encoder_memory(dictionary: int, size: int) -> int:
    """Bytes liblzma's encoder needs for :func:`compress` with this dictionary and data size."""
    coder = _Coder(_lib(), b"", size + dictionary, encoder=True)
    return coder.memory() + dictionary + 2 * size  # plus the dictionary, the data and the output held


def compress(data: bytes, dictionary: Buffer) -> bytes:
    """``data`` as one raw LZMA2 stream whose matches may reach into ``dictionary``."""
    coder = _Coder(_lib(), dictionary, len(data), encoder=True)
    capacity = len(data) + len(data) // 64 + (64 << 10)  # LZMA2 stores incompressible chunks as is
    out, ret, _ = coder.run(data, capacity, encoder=True)
    if ret != _STREAM_END:
        raise DeltaFormatError(f"liblzma could not compress ({_ERRORS.get(ret, ret)})")
    return bytes(out)


def decompress(data: bytes, dictionary: Buffer, size: int) -> bytearray:
    """The ``size`` bytes the raw LZMA2 stream ``data`` rebuilds after ``dictionary``. The stream
    must end exactly there, with no byte after it; the decoder never holds more than ``size + 1``
    output bytes or a larger dictionary than :func:`dict_size` of the two, whatever the stream says."""
    coder = _Coder(_lib(), dictionary, size, encoder=False)
    out, ret, left = coder.run(data, size + 1, encoder=False)
    if ret not in (_OK, _STREAM_END):
        raise DeltaFormatError(f"the LZMA stream is corrupt ({_ERRORS.get(ret, ret)})")
    if len(out) != size or ret != _STREAM_END:
        raise DeltaFormatError(f"the LZMA stream does not hold exactly its {size} bytes")
    if left:
        raise DeltaFormatError(f"the LZMA stream has {left} bytes after its end")
    return out


__all__ = ["DICT_MAX", "available", "compress", "decompress", "dict_size", "encoder_memory"]
