"""Start-up cost: import the heavy shared dependencies with the optional extras they never need here hidden.

Every process of ours (both CLIs, the agent, an embedding app) imports python-tuf, hence
``securesystemslib.signer``, whose package imports each cloud signer eagerly; its AWS KMS signer imports boto3
whenever boto3 is installed (it is, with the ``s3`` extra), which alone took 0.2 s of a 0.4 s start-up. httpx likewise
imports its command-line tool (rich, pygments) when those happen to be installed. Neither is used by anything we run:
we sign with local keys or through the key URIs of :mod:`pinnacle_updates.repo_tools.keys` (which brings the AWS
signer back with boto3 when an ``awskms:`` key asks for it, :func:`restore_aws_kms_signer`), and we never call httpx's
CLI. The modules are hidden only while those two packages import (a ``None`` entry in ``sys.modules`` makes ``import``
raise ImportError, which both packages handle as "not installed"); afterwards they import normally.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

#: (package to import, the optional modules it need not see); the order is the import order.
LEAN = (
    ("securesystemslib.signer", ("boto3",)),
    ("httpx", ("rich", "pygments")),
)


@contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """``import name`` raises ImportError inside the block for each of ``names`` not imported yet."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the documented way to make an import fail
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def import_lean() -> None:
    """Import the packages of :data:`LEAN` without their unused extras (a no-op for any already imported)."""
    for package, optional in LEAN:
        if package in sys.modules:
            continue
        # not installed here (a partial environment): whoever needs it says so when it imports it
        with _hidden(optional), suppress(ImportError):
            importlib.import_module(package)


def restore_aws_kms_signer() -> None:
    """Re-import securesystemslib's AWS KMS signer with boto3 visible and register it for ``awskms:`` URIs."""
    from securesystemslib.signer import SIGNER_FOR_URI_SCHEME, _aws_signer

    if _aws_signer.AWS_IMPORT_ERROR is None:
        return
    module = importlib.reload(_aws_signer)
    SIGNER_FOR_URI_SCHEME[module.AWSSigner.SCHEME] = module.AWSSigner
