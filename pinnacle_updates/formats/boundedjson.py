"""Bounded JSON decoding: the one way pinnacle turns bytes into JSON values.

Pure (bytes in, values out). Python's ``json`` module trusts its input's shape: nesting a few
thousand levels deep raises ``RecursionError``, an integer of more than 4,300 digits ``ValueError``
(and smaller ones still cost quadratic time), ``NaN``/``Infinity`` are accepted, a later duplicate
key silently wins, and ``\\ud800`` decodes to a lone surrogate that crashes whoever prints it.
Every document the client or the publisher reads (local state, history lines, cached manifests,
delta headers, channel indexes, key directories, publisher settings) goes through :func:`loads`,
which bounds all of that and raises :class:`FormatError` (a ``ValueError``) for *every* decoding
failure, so each caller has one exception to turn into its own one-line error.

python-tuf parses TUF metadata itself (``Metadata.from_bytes``); it wraps every exception of its
parser, ``RecursionError`` included, into ``DeserializationError``, and ngclient bounds each
file's length, so metadata is left to it.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64
"""Nesting levels of arrays and objects (our deepest document, a manifest, uses 4)."""
MAX_INT_DIGITS = 40
"""Digits of an integer (sizes and counts fit in 20; 40 leaves room for any 128-bit value)."""
MAX_FLOAT_CHARS = 64
"""Characters of a number with a fraction or exponent (a float's shortest repr is under 25)."""
DOCUMENT_MAX = 64 << 20
"""Bytes of a signed document (manifest, channel index, delta header) when the caller names no bound."""


class FormatError(ValueError):
    """A document does not follow its format; the message names the field."""


# Depth is counted on the bytes that matter, all in C: escapes dropped, then everything but quotes
# and brackets; an adjacent pair of quotes is an empty string or the end of one string and the start
# of the next, so dropping it keeps every bracket on its side of the quotes (our documents shrink
# to their brackets: 25 ms for a 15 MB manifest of 100,000 files, where the parse takes 140 ms).
_ESCAPED = re.compile(rb"\\.", re.DOTALL)
_NOT_KEPT = bytes(c for c in range(256) if c not in b'"[]{}')
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# Every escape sequence as one token, so that ``\\ud800`` (an escaped backslash, then text) is not
# taken for a surrogate escape; a high surrogate must be followed by a low one and a low one preceded.
_ESCAPE = re.compile(r"\\(?:(?P<high>u[dD][89abAB][0-9a-fA-F]{2})(?P<low>\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
                     r"|(?P<lone>u[dD][c-fC-F][0-9a-fA-F]{2})|.)", re.DOTALL)
_SURROGATE_HINT = re.compile(r"\\u[dD][89a-fA-F]")


def loads(data: bytes | str, what: str, *, max_bytes: int = DOCUMENT_MAX, max_depth: int = MAX_DEPTH) -> Any:
    """Decode the JSON document ``data`` (UTF-8) describing ``what``, within the bounds above;
    ``FormatError`` naming ``what`` and the broken rule otherwise."""
    size = len(data)
    if size > max_bytes:
        raise FormatError(f"{what}: {size} bytes, more than the {max_bytes}-byte limit")
    try:
        text, data = (data.decode("utf-8"), data) if isinstance(data, bytes) else (data, data.encode("utf-8"))
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:  # invalid UTF-8, or a str holding a raw surrogate
        raise FormatError(f"{what}: not UTF-8 (at {exc.start})") from None
    _check_depth(data, what, max_depth)
    if _SURROGATE_HINT.search(text):
        _check_surrogates(text, what)
    try:
        return json.loads(
            text,
            parse_int=lambda s: _parse_int(s, what),
            parse_float=lambda s: _parse_float(s, what),
            parse_constant=lambda s: _refuse_constant(s, what),
            object_pairs_hook=lambda pairs: _object(pairs, what),
        )
    except FormatError:
        raise
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # the bounds above should make these unreachable
        raise FormatError(f"{what}: not valid JSON ({type(exc).__name__})") from None


def load_object(data: bytes | str, what: str, *, max_bytes: int = DOCUMENT_MAX) -> dict[str, Any]:
    """:func:`loads` of a document that must be a JSON object."""
    doc = loads(data, what, max_bytes=max_bytes)
    if not isinstance(doc, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(doc), "a number")
        raise FormatError(f"{what}: expected a JSON object, not {kind}")
    return doc


def _check_depth(data: bytes, what: str, max_depth: int) -> None:
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    if b"\\" in data:
        data = _ESCAPED.sub(b"", data)
    kept = data.translate(None, _NOT_KEPT).replace(b'""', b"")
    # Outside strings: the pieces between quotes at even positions. An unterminated string leaves
    # its brackets counted, which matters only for text the parser refuses anyway.
    brackets = b"".join(kept.split(b'"')[0::2])
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth:
        raise FormatError(f"{what}: nested deeper than {max_depth} levels")


def _check_surrogates(text: str, what: str) -> None:
    for m in _ESCAPE.finditer(text):
        if m["lone"] or (m["high"] and not m["low"]):
            raise FormatError(f"{what}: a string holds an unpaired surrogate ({m.group(0)[:6]})")


def _parse_int(s: str, what: str) -> int:
    if len(s) - s.startswith("-") > MAX_INT_DIGITS:
        raise FormatError(f"{what}: an integer of {len(s)} characters (at most {MAX_INT_DIGITS} digits)")
    return int(s)


def _parse_float(s: str, what: str) -> float:
    if len(s) > MAX_FLOAT_CHARS:
        raise FormatError(f"{what}: a number of {len(s)} characters (at most {MAX_FLOAT_CHARS})")
    value = float(s)
    if not math.isfinite(value):
        raise FormatError(f"{what}: the number {s[:20]} is out of range")
    return value


def _refuse_constant(s: str, what: str) -> Any:
    raise FormatError(f"{what}: {s} is not a JSON number")


def _object(pairs: list[tuple[str, Any]], what: str) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise FormatError(f"{what}: the key {twice[:40]!r} appears twice")
    return doc


__all__ = ["DOCUMENT_MAX", "MAX_DEPTH", "MAX_FLOAT_CHARS", "MAX_INT_DIGITS", "FormatError", "load_object", "loads"]
