"""Custom channels: ``pinnacle-release channel add REPO_DIR NAME`` (``nightly``, ``lts-2026``, one per customer).

A channel is a TUF role that top-level targets delegates (``NAME/*`` paths, one key of its own), so a
new channel is a new targets version: it is signed by the targets keys (offline ones included: with
``-o FILE`` it goes through ``targets sign`` / ``targets publish`` like a key rotation), and the
channel's first version, an empty signed index, is signed by the channel's new key, which is an
online key from then on (publish, promote, rollout and yank in that channel use only it, with
snapshot and timestamp). Names follow the one rule, ``formats.index.check_channel``; promotion works
between any two channels.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pinnacle_updates.formats.index import FormatError, check_channel

from . import rootsign
from .errors import PublishRefused
from .keys import KeyStore, PassphraseProvider
from .rotate import apply_changes, targets_holders
from .store import Repository


def add_channel(repo: Repository, keys: KeyStore, name: str, output: Path | None = None,
                passphrase: PassphraseProvider | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Delegate a new channel ``name`` with a key generated into ``keys``; publish at once when the
    key directory holds the targets keys, else write the next targets version to ``output``."""
    try:
        check_channel(name)
    except FormatError as exc:
        raise PublishRefused(str(exc)) from None
    state = repo.load()
    if name in state.channels:
        raise PublishRefused(f"channel '{name}' already exists")
    result = apply_changes(repo, keys, "targets", rootsign.KeyChanges(channels=[name]), [targets_holders(state)],
                           output, passphrase, now)
    return {**result, "channel": name, "new_keyid": result["generated_keyids"][0]}


def list_channels(repo: Repository) -> dict[str, Any]:
    """The channels the committed targets delegates, each with its role version and key ids."""
    state = repo.load()
    delegations = state.targets.signed.delegations
    roles = delegations.roles if delegations and delegations.roles else {}
    return {"channels": [{"name": name, "version": md.signed.version, "keyids": list(roles[name].keyids),
                          "threshold": roles[name].threshold} for name, md in state.channels.items()]}
