"""``sync REPO_DIR s3://BUCKET/PREFIX``: publish a repository straight to an S3-compatible bucket.

Object stores have no rename, so the order of the uploads is the only protection: it is the one of
the directory sync (:func:`repo_tools.sync.upload_order`: targets, role metadata, root versions,
snapshots, ``timestamp.json`` last, with the key-rotation exception), cut into the steps of
:func:`repo_tools.sync.stages`. The files of a step go up in parallel (at most ``jobs`` requests
in flight); a step begins only when every upload of the one before has been confirmed by the store,
and ``timestamp.json`` (the bytes read before the source was listed) is a step of its own, after
all others. A sync that fails or is killed at any point therefore leaves the bucket serving the
state it served before: every object appears whole (one PUT, or one CompleteMultipartUpload) and
nothing served refers to the new objects until the timestamp does. Running it again finishes.

* **Headers**: each object gets ``Cache-Control`` and ``Content-Type`` from
  :mod:`repo_tools.hosting` (the rule nginx and ``serve`` use: ``timestamp.json`` never cached,
  everything else immutable), ``Content-MD5`` (the store checks the bytes) and ``x-amz-meta-sha256``.
* **Skipping**: one listing of the prefix gives every object's size and ETag. Content-addressed
  targets are unchanged when key and size match; other files when the ETag is the MD5 of the local
  file (a single PUT), or else when the stored ``sha256`` metadata matches (a HEAD).
* **Big files** (``multipart_threshold`` and up) go as multipart uploads of ``part_size`` parts.
  An upload that a killed sync left unfinished is resumed: parts already stored whose size and
  MD5 match the local file are kept, the rest sent, then the upload completed. (Give the bucket a
  lifecycle rule that aborts incomplete multipart uploads after a few days for abandoned ones.)
* **Deleting**: nothing, unless ``prune``: then, after the timestamp, the metadata versions that
  :func:`repo_tools.prune.retention` (the rule of ``pinnacle-release prune``) gives up, judged
  against the snapshot the new timestamp names. Root versions and targets are never deleted.
* **Credentials** come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  ``AWS_PROFILE`` and ``~/.aws``, instance roles); ``endpoint_url`` (or ``AWS_ENDPOINT_URL``) for
  stores other than AWS, addressed path-style. They are never printed: every failure becomes an
  :class:`~repo_tools.errors.ObjectStoreError` of one line naming the bucket and endpoint.

Run one sync per bucket prefix at a time. Clients read the bucket (or a CDN in front of it) over
plain HTTP(S) with anonymous read access; they never need an S3 library.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tuf.api.metadata import Metadata, Snapshot, Timestamp

from .errors import ObjectStoreError, ReleaseError, RepositoryStateError
from .hosting import cache_control_for, content_type_for
from .prune import retention
from .sync import TIMESTAMP, SyncItem, content_addressed, stages, upload_order
from .sync import sync as directory_sync

SCHEME = "s3://"
MiB = 1 << 20
DEFAULT_JOBS = 8
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_METADATA = "metadata/"
_SHA_KEY = "sha256"

Progress = Callable[[str, str], None]


def is_s3_url(value: str | os.PathLike[str]) -> bool:
    return str(value).startswith(SCHEME)


@dataclass(frozen=True)
class Location:
    """``s3://BUCKET/PREFIX``: ``prefix`` is empty or ends with '/'."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Location:
        rest = url[len(SCHEME):] if is_s3_url(url) else ""
        bucket, _, prefix = rest.partition("/")
        parts = [p for p in prefix.split("/") if p]
        if not _BUCKET.match(bucket) or any(p in (".", "..") for p in parts):
            raise ObjectStoreError(f"{url!r} is not an s3://BUCKET[/PREFIX] URL")
        return cls(bucket, "".join(f"{p}/" for p in parts))

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Stored:
    """An object found by the listing."""

    size: int
    etag: str  # without quotes


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    copied: int = 0
    skipped: int = 0
    copied_bytes: int = 0
    requests: int = 0  # PUT object, multipart create/part/complete, DELETE: what writes
    parts: int = 0
    parts_resumed: int = 0
    deleted: int = 0

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def public_endpoint(endpoint: str | None) -> str:
    """``endpoint`` fit for a message: without any user:password part."""
    if not endpoint:
        return "AWS S3"
    parts = urlsplit(endpoint)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))\
        if parts.hostname else endpoint


def make_client(endpoint_url: str | None = None, profile: str | None = None, jobs: int = DEFAULT_JOBS) -> Any:
    """A boto3 S3 client from the standard credential chain (errors surface at the first request)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ObjectStoreError("sync to s3:// needs boto3: pip install 'pinnacle-updates[s3]'") from None
    with translate(None, endpoint_url):
        session = boto3.session.Session(profile_name=profile)
        explicit = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            region_name=session.region_name or "us-east-1",
            s3={"addressing_style": "path" if explicit else "auto"},
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=10, read_timeout=120, max_pool_connections=2 * jobs + 2,
            # Content-MD5 is sent on every upload; the newer CRC trailers are not understood by every
            # S3-compatible store, so they are sent only where an operation requires them.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        return session.client("s3", endpoint_url=endpoint_url, config=config)


@contextlib.contextmanager
def translate(location: Location | None, endpoint: str | None, after: str = "") -> Iterator[None]:
    """botocore's exceptions as one-line :class:`ObjectStoreError` (never with credentials in it)."""
    try:
        yield
    except ReleaseError:
        raise
    except Exception as exc:
        raise ObjectStoreError(_describe(exc, location, endpoint) + after) from None


def _describe(exc: Exception, location: Location | None, endpoint: str | None) -> str:
    from botocore import exceptions as bx

    where = public_endpoint(endpoint)
    target = str(location) if location is not None else "the bucket"
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                "(a profile in ~/.aws/credentials)")
    if isinstance(exc, bx.ProfileNotFound):
        return f"AWS profile {exc.kwargs.get('profile')!r} not found in ~/.aws/config or ~/.aws/credentials"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError
                  | bx.ReadTimeoutError | bx.HTTPClientError):
        return f"cannot reach the object store at {where} ({type(exc).__name__})"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "error"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        if code == "NoSuchBucket":
            return f"bucket {location.bucket if location else '?'!r} does not exist at {where}: create it first"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "InvalidClientTokenId", "AuthorizationHeaderMalformed"):
            return f"{where} refused the credentials ({code}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or " \
                   "the profile"
        if code in ("AccessDenied", "403", "Forbidden"):
            return f"access to {target} at {where} denied ({code}): the credentials may not list and write it"
        return f"{where} answered {code} (HTTP {status}) to {exc.operation_name} on {target}"
    if isinstance(exc, bx.BotoCoreError):
        return f"object store error at {where}: {type(exc).__name__}"
    if isinstance(exc, OSError):
        return f"reading the repository failed: {exc.strerror or exc} ({exc.filename or ''})"
    return f"sync to {target} failed: {type(exc).__name__}"


def _digests(path: Path, start: int = 0, length: int | None = None) -> tuple[str, str]:
    """(md5, sha256) hex of ``path`` (or of ``length`` bytes at ``start``)."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length if length is not None else -1
        while left != 0:
            chunk = f.read(1 << 20 if left < 0 else min(1 << 20, left))
            if not chunk:
                break
            md5.update(chunk)
            sha.update(chunk)
            left -= len(chunk) if left > 0 else 0
    return md5.hexdigest(), sha.hexdigest()


def _b64(md5_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


def part_size_for(size: int, part_size: int) -> int:
    """The part size used for a file of ``size`` bytes (the same on every run: resumption needs it)."""
    part = max(part_size, MIN_PART_SIZE)
    return max(part, -(-size // MAX_PARTS))


class _S3Sync:
    def __init__(self, client: Any, location: Location, source: Path, *, progress: Progress | None,
                 dry_run: bool, jobs: int, multipart_threshold: int, part_size: int) -> None:
        self.client = client
        self.location = location
        self.source = source
        self.progress = progress
        self.dry_run = dry_run
        self.jobs = max(1, jobs)
        self.threshold = max(multipart_threshold, MIN_PART_SIZE)
        self.part_size = part_size
        self.tally = _Tally()
        self.in_flight = threading.BoundedSemaphore(self.jobs)
        self.listing: dict[str, Stored] = {}
        self._report_lock = threading.Lock()

    # -- reading the bucket ------------------------------------------------------------------
    def list_bucket(self) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self.location.prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(self.location.prefix):]
                self.listing[relative] = Stored(int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))

    def read(self, relative: str) -> bytes:
        body = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(relative))["Body"]
        with contextlib.closing(body):
            data: bytes = body.read()
        return data

    def report(self, action: str, relative: str) -> None:
        if self.progress is not None:
            with self._report_lock:
                self.progress(action, relative)

    # -- deciding ----------------------------------------------------------------------------
    def changed(self, item: SyncItem, data: bytes | None) -> tuple[bool, tuple[str, str] | None]:
        """Whether ``item`` must be uploaded, and its (md5, sha256) when they were computed."""
        stored = self.listing.get(item.relative)
        size = len(data) if data is not None else (self.source / item.relative).stat().st_size
        if stored is None or stored.size != size:
            return True, None
        if content_addressed(item):
            return False, None  # the name is the sha256 of the content; objects only ever appear whole
        digests = (hashlib.md5(data, usedforsecurity=False).hexdigest(), hashlib.sha256(data).hexdigest()) \
            if data is not None else _digests(self.source / item.relative)
        if stored.etag == digests[0]:
            return False, digests
        if _PLAIN_MD5.match(stored.etag):
            return True, digests  # a single-PUT object with other bytes
        head = self.client.head_object(Bucket=self.location.bucket, Key=self.location.key(item.relative))
        return head.get("Metadata", {}).get(_SHA_KEY) != digests[1], digests

    # -- writing -----------------------------------------------------------------------------
    def headers(self, relative: str, sha: str) -> dict[str, Any]:
        return {"CacheControl": cache_control_for(relative), "ContentType": content_type_for(relative),
                "Metadata": {_SHA_KEY: sha}}

    def item(self, item: SyncItem, data: bytes | None, parts_pool: ThreadPoolExecutor) -> None:
        """Check one file and upload it if it changed; the call returns once the store confirmed it."""
        changed, digests = self.changed(item, data)
        size = len(data) if data is not None else (self.source / item.relative).stat().st_size
        if changed and not self.dry_run:
            path = self.source / item.relative
            if data is None and size >= self.threshold:
                self.multipart(item, path, size, parts_pool)
            else:
                md5, sha = digests or ((hashlib.md5(data, usedforsecurity=False).hexdigest(),
                                        hashlib.sha256(data).hexdigest()) if data is not None else _digests(path))
                with contextlib.ExitStack() as stack:
                    body = data if data is not None else stack.enter_context(open(path, "rb"))
                    with self.in_flight:
                        self.client.put_object(Bucket=self.location.bucket, Key=self.location.key(item.relative),
                                               Body=body, ContentLength=size, ContentMD5=_b64(md5),
                                               **self.headers(item.relative, sha))
                self.tally.add(requests=1)
        if changed:
            self.tally.add(copied=1, copied_bytes=size)
        else:
            self.tally.add(skipped=1)
        self.report("copied" if changed else "skipped", item.relative)

    def multipart(self, item: SyncItem, path: Path, size: int, parts_pool: ThreadPoolExecutor) -> None:
        bucket, key = self.location.bucket, self.location.key(item.relative)
        part = part_size_for(size, self.part_size)
        count = -(-size // part)
        uploads = self.unfinished(key)
        upload_id: str | None = None
        stored: dict[int, tuple[int, str]] = {}
        if uploads and content_addressed(item):
            upload_id = uploads.pop()  # the newest; a content-addressed key always has the same bytes
            paginator = self.client.get_paginator("list_parts")
            for page in paginator.paginate(Bucket=bucket, Key=key, UploadId=upload_id):
                for p in page.get("Parts", []):
                    stored[int(p["PartNumber"])] = (int(p["Size"]), str(p["ETag"]).strip('"'))
        if upload_id is None:
            _, sha = _digests(path)
            with self.in_flight:
                upload_id = str(self.client.create_multipart_upload(Bucket=bucket, Key=key,
                                                                    **self.headers(item.relative, sha))["UploadId"])
            self.tally.add(requests=1)

        def send(number: int) -> str:
            start = (number - 1) * part
            length = min(part, size - start)
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read(length)
            md5 = hashlib.md5(chunk, usedforsecurity=False).hexdigest()
            if stored.get(number) == (length, md5):
                self.tally.add(parts_resumed=1)
                return md5
            with self.in_flight:
                etag = str(self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                   Body=chunk, ContentLength=length, ContentMD5=_b64(md5))["ETag"])
            self.tally.add(requests=1, parts=1)
            self.report("part", f"{item.relative} {number}/{count}")
            return etag.strip('"')

        futures = [parts_pool.submit(send, n) for n in range(1, count + 1)]
        etags = _results(futures)
        with self.in_flight:
            self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in enumerate(etags, 1)]})
        self.tally.add(requests=1)
        for stale in uploads:  # older unfinished uploads of the same key (best effort)
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=stale)

    def unfinished(self, key: str) -> list[str]:
        """Upload ids of unfinished multipart uploads of exactly ``key``, oldest first."""
        found: list[tuple[Any, str]] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=key):
            found.extend((u.get("Initiated"), str(u["UploadId"])) for u in page.get("Uploads", []) if u["Key"] == key)
        found.sort(key=lambda u: (u[0] is not None, u[0]))
        return [upload_id for _, upload_id in found]

    def prune(self, timestamp: bytes, uploaded: set[str], now: datetime) -> list[str]:
        """Delete (or, dry, list) the metadata versions the retention rule of ``prune`` gives up."""
        version = Metadata[Timestamp].from_bytes(timestamp).signed.snapshot_meta.version
        snapshot_path = self.source / _METADATA / f"{version}.snapshot.json"
        current = Metadata[Snapshot].from_bytes(snapshot_path.read_bytes()).signed
        names = {r[len(_METADATA):] for r in (*self.listing, *uploaded)
                 if r.startswith(_METADATA) and "/" not in r[len(_METADATA):]}

        def load(name: str) -> bytes | None:
            local = self.source / _METADATA / name
            if local.exists():
                return local.read_bytes()
            try:
                return self.read(_METADATA + name)
            except Exception:
                return None

        delete, _ = retention(current, sorted(names), load, now)
        doomed = [_METADATA + name for name in delete if _METADATA + name in self.listing]
        for start in range(0, len(doomed), 1000):
            batch = doomed[start:start + 1000]
            if not self.dry_run:
                answer = self.client.delete_objects(Bucket=self.location.bucket, Delete={
                    "Objects": [{"Key": self.location.key(r)} for r in batch], "Quiet": True})
                self.tally.add(requests=1)
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise ObjectStoreError(f"deleting {first.get('Key')} from {self.location} failed "
                                           f"({first.get('Code')}); the bucket serves the new state")
            for relative in batch:
                self.tally.add(deleted=1)
                self.report("deleted", relative)
        return doomed


def _results(futures: list[Future[str]]) -> list[str]:
    """Every future's result, in order; on the first failure the others are cancelled, then it is raised."""
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        for f in futures:
            with contextlib.suppress(BaseException):
                f.result()
        raise


def sync_s3(source: Path, dest: str, *, endpoint_url: str | None = None, profile: str | None = None,
            progress: Progress | None = None, dry_run: bool = False, prune: bool = False,
            now: datetime | None = None, jobs: int = DEFAULT_JOBS, multipart_threshold: int = MULTIPART_THRESHOLD,
            part_size: int = PART_SIZE, client: Any = None) -> dict[str, Any]:
    """Upload ``source`` (a repository) to ``dest`` (``s3://BUCKET/PREFIX``) in upload order; return counts.

    ``progress(action, text)`` is called as files are done: "copied"/"skipped" and a relative path
    ("copied" means "would be copied" with ``dry_run``), "part" and "PATH N/COUNT" per multipart
    part sent, "deleted" and a path with ``prune``."""
    location = Location.parse(dest)
    source = Path(source).resolve()
    try:
        timestamp = (source / "metadata" / "timestamp.json").read_bytes()
    except FileNotFoundError:
        raise RepositoryStateError(f"{source} is not an initialised repository (no metadata/timestamp.json)") from None
    if client is None:
        client = make_client(endpoint_url, profile, jobs)
    endpoint = str(getattr(getattr(client, "meta", None), "endpoint_url", endpoint_url or "")) or None
    run = _S3Sync(client, location, source, progress=progress, dry_run=dry_run, jobs=jobs,
                  multipart_threshold=multipart_threshold, part_size=part_size)
    with translate(location, endpoint):
        run.list_bucket()
        items = upload_order(source, timestamp, lambda r: r in run.listing, run.read)
    after = f"; {location} still serves its previous state, run sync again"
    deleted: list[str] = []
    with translate(location, endpoint, after), ThreadPoolExecutor(run.jobs, "s3-object") as objects, \
            ThreadPoolExecutor(run.jobs, "s3-part") as parts:
        def one(item: SyncItem) -> str:
            run.item(item, timestamp if item.rank == TIMESTAMP else None, parts)  # the bytes read first
            return item.relative

        for stage in stages(items):  # each confirmed whole before the next; the timestamp alone, last
            _results([objects.submit(one, item) for item in stage])
    if prune:
        uploaded = {i.relative for i in items}
        with translate(location, endpoint, "; the bucket serves the new state, run sync --prune again"):
            deleted = run.prune(timestamp, uploaded, now or datetime.now(UTC))
    t = run.tally
    result: dict[str, Any] = {
        "source": str(source), "dest": str(location), "endpoint": public_endpoint(endpoint),
        "copied": t.copied, "skipped": t.skipped, "copied_bytes": t.copied_bytes, "requests": t.requests,
        "parts": t.parts, "parts_resumed": t.parts_resumed, "dry_run": dry_run,
    }
    if prune:
        result["deleted" if not dry_run else "would_delete"] = deleted
    return result


def sync_to(source: Path, dest: str, *, endpoint_url: str | None = None, progress: Progress | None = None,
            dry_run: bool = False, prune: bool = False, jobs: int = DEFAULT_JOBS) -> tuple[dict[str, Any], str]:
    """``sync`` to either kind of destination (``s3://BUCKET/PREFIX`` or a directory): the result and
    one line for a person. What the ``sync`` command and ``publish --sync-to`` call."""
    if is_s3_url(dest):
        result = sync_s3(source, dest, endpoint_url=endpoint_url, progress=progress, dry_run=dry_run, prune=prune,
                         jobs=jobs)
    else:
        if prune or endpoint_url:
            raise RepositoryStateError(f"--{'prune' if prune else 'endpoint-url'} is for s3:// destinations; "
                                       "prune a served directory with `pinnacle-release prune`")
        result = directory_sync(source, Path(dest), progress, dry_run)
    line = (f"{'would sync' if dry_run else 'synced'} {source} -> {dest}: {result['copied']} copied "
            f"({result['copied_bytes']} bytes), {result['skipped']} unchanged")
    gone = result.get("deleted", result.get("would_delete"))
    if gone is not None:
        line += f", {len(gone)} {'would be ' if dry_run else ''}deleted"
    return result, line


__all__ = ["DEFAULT_JOBS", "MULTIPART_THRESHOLD", "PART_SIZE", "Location", "is_s3_url", "make_client",
           "part_size_for", "public_endpoint", "sync_s3", "sync_to"]
