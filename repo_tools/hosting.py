"""Static hosting of a repository directory: the cache rule, and the nginx configuration for it.

The repository needs no server logic, only the right ``Cache-Control`` per file. This module is
the one place that rule lives: ``repo_tools.serve`` (the Python server) calls
:func:`cache_control_for`, ``repo_tools.objectstore`` stores it (and :func:`content_type_for`)
on every object it uploads, and :func:`nginx_site` writes the same rule as nginx configuration
(``pinnacle-release nginx-config``; the tests and ``bench/hosting.py`` run nginx with exactly that
output, wrapped by :func:`nginx_standalone` into a configuration an unprivileged nginx can run).

* ``timestamp.json`` is never cached: it is the one unversioned file and announces releases.
* Every other file is immutable: consistent snapshots give metadata versioned names and targets
  content-addressed ones (python-tuf #2605), so caches may keep them forever.
* Errors (the ``404`` a client gets for ``N+1.root.json`` on every refresh) are never cached
  either: a cached 404 would hide a new root, and with it a key rotation. (nginx adds a file's
  header before its range filter turns a request into a ``416``, so there a 416 carries the
  file's value; the Python server sends ``no-store``. Clients drop the partial file either way.)

JSON (TUF metadata, channel indexes) goes gzipped to clients that accept it (:func:`gzip_worthwhile`):
on a small update the metadata, not the delta, is most of the download, and gzip takes about 40% off
it. TUF verifies the decoded bytes, so this changes nothing of what is trusted; targets are zstd
already and are sent as they are. Object stores cannot negotiate, so they serve the JSON plain.

nginx answers byte ranges itself (a resumed download asks ``Range: bytes=N-``); ``max_ranges 1``
makes it treat a multi-range request as a request for the whole file, as the Python server does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ReleaseError

NO_STORE = "no-cache, no-store, max-age=0"
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE_FILES = frozenset({"timestamp.json"})

ACCESS_LOG_FORMAT = "pinnacle_json"
"""The name of the access log format :func:`nginx_site` defines: one JSON object per request with
the fields of :data:`ACCESS_LOG_FIELDS` (every value a string, as nginx writes them)."""

ACCESS_LOG_FIELDS = {
    "time": "$msec",  # when the request finished (seconds since the epoch, millisecond resolution)
    "status": "$status",
    "body_bytes": "$body_bytes_sent",  # body bytes sent (for a client that went away: as far as it got)
    "bytes": "$bytes_sent",  # the same plus the response headers
    "method": "$request_method",
    "uri": "$request_uri",
    "range": "$http_range",
    "request_time": "$request_time",
    "connection": "$connection",
    "connection_requests": "$connection_requests",
}

GZIP_MIN_LENGTH = 256
"""Smaller JSON answers go as they are (gzip's 18-byte frame and Huffman tables would outweigh the gain)."""
GZIP_LEVEL = 9


def gzip_worthwhile(path: str, size: int) -> bool:
    """Whether an answer with ``path`` and ``size`` bytes goes gzipped to a client that accepts gzip:
    JSON of at least :data:`GZIP_MIN_LENGTH` bytes (nginx: ``gzip_types``, ``gzip_min_length``)."""
    return content_type_for(path) == "application/json" and size >= GZIP_MIN_LENGTH


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (listed, or ``*``, with a q-value above 0)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower()
        try:
            return not q.startswith("q=") or float(q[2:]) > 0
        except ValueError:
            return False
    return False


_UNSAFE_IN_CONFIG = re.compile(r'[\x00-\x1f"\\$;{}#\']')


def cache_control_for(path: str, status: int = 200) -> str:
    """The ``Cache-Control`` value for a response to ``path`` (the URL path) with ``status``."""
    if status >= 400:
        return NO_STORE
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name in NO_CACHE_FILES or not name:
        return NO_STORE
    return IMMUTABLE


def content_type_for(path: str) -> str:
    """The ``Content-Type`` of a repository file, as the nginx configuration's ``types`` says:
    ``application/json`` for ``.json`` files (metadata, channel indexes), bytes for the rest."""
    return "application/json" if path.endswith(".json") else "application/octet-stream"


def _quoted(value: str, what: str) -> str:
    if _UNSAFE_IN_CONFIG.search(value):
        raise ReleaseError(f"{what} {value!r} cannot go into an nginx configuration (quotes, '$', ';', braces, "
                           "'#' and control characters are refused)")
    return f'"{value}"'


def nginx_site(
    repo_dir: Path,
    *,
    listen: str = "80",
    server_name: str = "_",
    access_log: Path | None = None,
    limit_rate: str | None = None,
) -> str:
    """nginx configuration serving ``repo_dir`` read-only with the repository's cache headers.

    It belongs in nginx's ``http`` context (e.g. ``/etc/nginx/conf.d/pinnacle.conf``): a ``map`` and
    a ``log_format`` (each defined once per nginx) and one ``server`` block. ``access_log`` adds a
    JSON access log (:data:`ACCESS_LOG_FIELDS`); ``limit_rate`` caps each response's speed (nginx
    syntax, e.g. ``256k``; the tests use it to interrupt a download half way).
    """
    root = _quoted(str(repo_dir.absolute()), "repository path")
    listen_value = _quoted(listen.strip(), "listen address")[1:-1]
    if not listen_value:
        raise ReleaseError("the listen address is empty (80, 127.0.0.1:8080, [::]:80 default_server)")
    log_fields = ",".join(f'"{k}":"{v}"' for k, v in ACCESS_LOG_FIELDS.items())
    timestamp = "|".join(re.escape(n) for n in sorted(NO_CACHE_FILES))
    log = f"    access_log {_quoted(str(access_log.absolute()), 'access log path')} {ACCESS_LOG_FORMAT};\n" \
        if access_log is not None else ""
    rate = f"    limit_rate {_quoted(limit_rate, 'limit_rate')};\n" if limit_rate else ""
    return f"""\
# A pinnacle-updates repository, served as static files (generated by `pinnacle-release nginx-config`).
# nginx http context: the map and log_format once per nginx, then one server block per repository.

# Cache-Control of error answers (the 404 for the next root that clients get on every refresh):
# never cached, or a cache would hide a new root. Successful answers get theirs from the locations.
map $status $pinnacle_error_cache_control {{
    ~^[123]  "";
    default  "{NO_STORE}";
}}

log_format {ACCESS_LOG_FORMAT} escape=json '{{{log_fields}}}';

server {{
    listen {listen_value};
    server_name {_quoted(server_name, "server name")};
    root {root};
{log}{rate}    server_tokens off;
    sendfile on;
    tcp_nopush on;
    max_ranges 1;
    types {{ application/json json; }}
    default_type application/octet-stream;
    # Metadata and channel indexes gzipped for clients that accept it (TUF checks the decoded bytes).
    gzip on;
    gzip_types application/json;
    gzip_min_length {GZIP_MIN_LENGTH};
    gzip_comp_level {GZIP_LEVEL};
    gzip_vary on;
    gzip_proxied any;
    add_header Cache-Control $pinnacle_error_cache_control always;

    # Versioned metadata and content-addressed targets: immutable. Only files; no directory listings.
    location / {{
        try_files $uri =404;
        add_header Cache-Control "{IMMUTABLE}";
        add_header Cache-Control $pinnacle_error_cache_control always;
    }}

    # The publisher's lock file and other dot files are not part of the repository.
    location ~ /\\. {{
        return 404;
    }}

    # The one unversioned file announces new releases: never cached.
    location ~ /({timestamp})$ {{
        try_files $uri =404;
        add_header Cache-Control "{NO_STORE}" always;
    }}
}}
"""


def nginx_standalone(
    repo_dir: Path,
    prefix: Path,
    *,
    listen: str,
    workers: int | str = 1,
    worker_connections: int = 1024,
    limit_rate: str | None = None,
) -> str:
    """A whole ``nginx.conf`` running :func:`nginx_site` without root-owned paths: the pid file,
    error log, access log (``PREFIX/access.log``) and temp directories all live in ``prefix``.

    Run it as ``nginx -p PREFIX -c PREFIX/nginx.conf -e stderr -g 'daemon off;'`` (tests, benchmarks,
    trials). As root, workers run as root too (nginx would otherwise switch to ``nobody``, which
    cannot read a private temporary directory).
    """
    prefix = prefix.absolute()
    site = nginx_site(repo_dir, listen=listen, access_log=prefix / "access.log", limit_rate=limit_rate)
    temp = "\n".join(
        f"    {kind}_temp_path {_quoted(str(prefix / (kind + '_temp')), 'prefix')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    indented = "".join(f"    {line}" if line.strip() else line for line in site.splitlines(keepends=True))
    return f"""\
# nginx for a pinnacle-updates repository, unprivileged (generated by repo_tools.hosting.nginx_standalone).
{user}worker_processes {workers};
worker_rlimit_nofile {2 * worker_connections + 64};
pid {_quoted(str(prefix / "nginx.pid"), "prefix")};
error_log {_quoted(str(prefix / "error.log"), "prefix")} warn;

events {{
    worker_connections {worker_connections};
}}

http {{
{temp}
    access_log off;
    keepalive_timeout 30s;

{indented}}}
"""
