"""Credentials out of anything shown: URLs with ``user:password@``, token query parameters, signed-URL
signatures, and free text (error messages, log lines) that carries such URLs.

Repository, health and webhook URLs may carry credentials (``https://user:secret@host/``, a CDN's
``?token=...``, an S3 pre-signed ``X-Amz-Signature``). The install needs them as they are; every
*display* of them (status, logs, history, errors, the dashboard) goes through this module, so there is
one rule for what counts as a secret. Pure text work: nothing here parses strictly or raises, since it
runs on messages about malformed URLs too.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Query/fragment parameter names whose values are secrets: matched as lowercase substrings, so
# ``access_token``, ``X-Amz-Security-Token``, ``X-Goog-Signature``, ``AWSAccessKeyId``, Azure's ``sig``
# and ``api_key`` are all covered.
_SECRET_PARTS = ("token", "secret", "sig", "passw", "pwd", "key", "auth", "credential", "session")
# A URL in free text: a scheme, ``://``, then everything up to white space or a quote/bracket that
# usually ends a quoted URL in a message.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_TRAILING = ".,;:!?)]}"
_USERINFO_IN_TEXT = re.compile(r"(://[^/?#\s@:]*:)[^/?#\s@]+@")
# A value ends at white space or a separator, trailing punctuation and quotes kept outside it.
_PARAM_IN_TEXT = re.compile(r"([?&;#]([^=\s&;#?]+)=)[^\s&;#]+?(?=[.,;:!?)\]}'\"]*(?:[\s&;#]|$))")
_URL_PARTS = re.compile(r"(?s)(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*:)?//(?P<authority>[^/?#]*)(?P<rest>.*)")


def secret_name(name: str) -> bool:
    """Whether a query parameter called ``name`` carries a secret value."""
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_PARTS)


def _params(text: str) -> str:
    """``a=1&token=x`` -> ``a=1&token=***`` (order, separators and other values kept byte for byte)."""
    out = []
    for item in re.split(r"([&;])", text):
        name, eq, value = item.partition("=")
        out.append(f"{name}={MASK}" if eq and value and secret_name(name) else item)
    return "".join(out)


def redact_url(url: str) -> str:
    """``url`` with its password (or a lone user name, often a token), secret query and fragment
    parameters replaced by ``***``; everything else as given. Never raises."""
    m = _URL_PARTS.match(url)
    if m is None:  # a local path, or not a URL at all: nothing to find
        return url
    authority = m["authority"]
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        userinfo = f"{user}:{MASK}" if colon else MASK
        authority = f"{userinfo}@{hostport}"
    return f"{m['scheme'] or ''}//{authority}{_params_after(m['rest'])}"


def _params_after(rest: str) -> str:
    """Redact the query and fragment parameters of a URL's path part."""
    path, hash_, fragment = rest.partition("#")
    path, question, query = path.partition("?")
    return path + question + _params(query) + hash_ + _params(fragment)


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`)."""
    if "://" not in text:  # the common case: a message without a URL costs one scan
        return text
    text = _URL_IN_TEXT.sub(_redact_match, text)
    # Second passes for what a URL match may have cut short (a quote inside a user name or a query,
    # both legal in URLs but also how messages quote them): any ``://user:password@`` and any
    # ``?name=value`` / ``&name=value`` left.
    text = _USERINFO_IN_TEXT.sub(rf"\1{MASK}@", text)
    return _PARAM_IN_TEXT.sub(lambda m: f"{m[1]}{MASK}" if secret_name(m[2]) else m[0], text)


def _redact_match(m: re.Match[str]) -> str:
    # Punctuation that ends a sentence or a "URL: reason" message is kept outside the URL.
    found = m.group(0)
    url = found.rstrip(_TRAILING)
    return redact_url(url) + found[len(url):]


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string passed through
    :func:`redact_text`; a new object, ``value`` unchanged."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


__all__ = ["MASK", "redact_data", "redact_text", "redact_url", "secret_name"]
