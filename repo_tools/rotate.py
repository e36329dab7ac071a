"""Key rotation and compromise recovery: ``keys rotate REPO_DIR --keys KEYS_DIR ROLE``.

Rotation is the prepare -> sign -> publish flow of :mod:`repo_tools.rootsign` with one change,
"replace every key of ROLE by a new one generated into KEYS_DIR":

* a channel role's keys live in the top-level targets delegation, so the targets keys sign the
  change; the channel role is then re-signed by its new key. Root is not touched.
* timestamp, snapshot, targets and root keys live in root, so a new root version is needed:
  a threshold of the current root keys and of the new root's keys sign it; the affected online
  roles are re-signed by their new keys in the same operation.

When the directory holds enough of the signing keys (targets, or root) the rotation completes at
once. Otherwise the unsigned next version is written to ``output`` for the key holders to sign
(``root sign`` / ``targets sign``) and publish (``root publish`` / ``targets publish``); the new
key waits in KEYS_DIR, pending, and only signs once published metadata trusts it.

After the rotation clients follow the root chain (or the new delegation) as usual and refuse
anything signed by the old key: this is the recovery from a leaked online key.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from . import rootsign
from .core.metadata import to_bytes
from .errors import PublishRefused
from .keys import TOP_LEVEL_ROLES, KeyStore, PassphraseProvider
from .store import Repository, RepoState


def targets_holders(state: RepoState) -> tuple[list[str], int]:
    """Who signs top-level targets: its key ids and threshold in the current root."""
    role = state.root.signed.roles["targets"]
    return list(role.keyids), role.threshold


def rotate_key(repo: Repository, keys: KeyStore, role: str, output: Path | None = None,
               passphrase: PassphraseProvider | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Replace ``role``'s keys with one new key; publish when possible, else write ``output``."""
    state = repo.load()
    if role in state.channels:
        signed_by = "targets"
        holders = [targets_holders(state)]
    elif role in TOP_LEVEL_ROLES:
        signed_by = "root"
        root = state.root.signed.roles["root"]
        # Rotating root itself: the new key is generated here, so the new root's threshold (1) is met.
        holders = [(list(root.keyids), root.threshold)]
    else:
        known = ", ".join([*TOP_LEVEL_ROLES, *state.channels])
        raise PublishRefused(f"unknown role '{role}' (one of {known})")
    result = apply_changes(repo, keys, signed_by, rootsign.KeyChanges(rotate=[role]), holders, output,
                           passphrase, now)
    return {**result, "role": role, "new_keyid": result["generated_keyids"][0]}


def apply_changes(repo: Repository, keys: KeyStore, signed_by: str, changes: rootsign.KeyChanges,
                  holders: list[tuple[list[str], int]], output: Path | None,
                  passphrase: PassphraseProvider | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Prepare the next ``signed_by`` (root or targets) version with ``changes`` (keys generated into
    KEYS_DIR); sign and publish it when KEYS_DIR holds a threshold of every ``holders`` entry (key
    ids, threshold), else write it to ``output`` for the key holders (``published`` False, ``next``
    says the two commands). Rotation and ``channel add`` both go this way."""
    state = repo.load()
    direct = all(len(keys.available(keyids)) >= threshold for keyids, threshold in holders)
    if not direct and output is None:
        raise PublishRefused(f"the {signed_by} keys are not in {keys.directory}: pass -o FILE to write the next "
                             f"{signed_by} version for its key holders to sign (nothing was changed)")
    data, summary = rootsign.prepare(repo, signed_by, changes, keys, passphrase or keys.passphrase, now)
    generated = summary["generated_keyids"]
    if not direct:
        assert output is not None
        rootsign.write_prepared(output, data)
        return {"generated_keyids": generated, "published": False, "file": str(output),
                "next": [f"pinnacle-release {signed_by} sign {output} --key KEY   (by: {'; '.join(summary['needs'])})",
                         f"pinnacle-release {signed_by} publish {repo.path} {output} --keys {keys.directory}"]}
    keys = KeyStore(keys.directory, keys.passphrase)  # sees the new key
    signer_ids = {k for keyids, _ in holders for k in keyids}
    if signed_by == "root":
        signer_ids |= set(summary["roles"]["root"]["keyids"])
    for signer in keys.available(sorted(signer_ids)):
        data, _ = rootsign.sign(data, signed_by, signer, trusted_root=to_bytes(state.root))
    result = rootsign.publish(repo, signed_by, data, keys, now)
    return {**result, "generated_keyids": generated, "published": True, "via": signed_by,
            "version": {signed_by: result["version"]}}
