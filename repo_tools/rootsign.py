"""Offline, threshold signing of root and top-level targets: prepare -> sign -> publish.

The two roles whose keys stay offline change through three separate steps, as tough's editor
does it, so that each can run on a different machine:

* ``prepare`` builds the next version (new keys, thresholds, expiry) from the committed
  repository and returns it *unsigned*; no private key is needed (``--rotate`` generates the new
  key into the key directory, where it waits, pending, until published metadata trusts it);
* ``sign`` appends one signature to such a file; it needs only the file and one key (a PEM file
  or any securesystemslib signer URI), never the repository;
* ``publish`` checks the thresholds (for root: the *old* root's and the *new* root's), then
  writes the new version and re-signs whatever the key change touches, crash-safely.

Crash safety of a root change: when timestamp, snapshot or targets keys change, their next
versions are signed by the new keys *and* by the old ones this machine still holds, and written
(targets, snapshot, timestamp) before ``N+1.root.json``. Every client therefore accepts every
intermediate state: one that still trusts root N verifies the old signatures, one that already
fetched N+1 the new ones. ``N+1.root.json`` appearing (one atomic rename) is the commit point.
Without the old keys there is a window of two renames where clients on root N refuse the new
timestamp; a crash inside it is repaired by running ``publish`` again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import DelegatedRole, Metadata, Role, Root, Targets
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from pinnacle_updates.formats.fsutil import atomic_write
from pinnacle_updates.formats.index import FormatError, check_channel

from .archive import Archive
from .core import metadata as meta
from .core.window import channel_of_bin
from .errors import KeyStoreError, PublishRefused, RepositoryStateError
from .keys import TOP_LEVEL_ROLES, KeyStore, PassphraseProvider, adopt_roles, generate_role_key
from .publish import new_channel, utcnow
from .store import Repository, RepoState

_PRETTY = JSONSerializer(compact=False)


# -- prepare --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyChanges:
    """What the next version changes. Role names are top-level roles (root file) or channels
    (targets file); ``remove`` takes key ids or unique prefixes of at least 8 characters."""

    add: Sequence[tuple[str, Key]] = ()
    remove: Sequence[str] = ()
    thresholds: Mapping[str, int] = field(default_factory=dict)
    rotate: Sequence[str] = ()
    expires_days: int | None = None
    channels: Sequence[str] = ()
    """New channels (targets only): each a delegation to a key generated into the key directory."""


def _roles(signed: Root | Targets) -> Mapping[str, Role | DelegatedRole]:
    if isinstance(signed, Root):
        return signed.roles
    delegations = signed.delegations
    return delegations.roles if delegations and delegations.roles else {}


def _keys(signed: Root | Targets) -> Mapping[str, Key]:
    if isinstance(signed, Root):
        return signed.keys
    return signed.delegations.keys if signed.delegations else {}


def _copy(md: Metadata) -> Metadata:  # type: ignore[type-arg]
    return Metadata.from_bytes(meta.to_bytes(md))


def _resolve(keyid: str, known: Iterable[str]) -> str:
    matches = [k for k in known if k == keyid or (len(keyid) >= 8 and k.startswith(keyid))]
    if len(matches) != 1:
        what = "matches no key" if not matches else "is ambiguous"
        raise PublishRefused(f"key id '{keyid}' {what} in the current metadata")
    return matches[0]


def _edit(md: Metadata, changes: KeyChanges, keys: KeyStore | None,  # type: ignore[type-arg]
          passphrase: PassphraseProvider | None) -> list[str]:
    """Apply ``changes`` to ``md.signed`` in place; return the key ids generated for rotations.

    Everything is checked before a key is generated, so a refused change leaves no pending key."""
    signed = md.signed
    roles = _roles(signed)
    kind = "root" if isinstance(signed, Root) else "targets"
    named = [r for r, _ in changes.add] + list(changes.thresholds) + list(changes.rotate)
    for role in named:
        if role not in roles:
            raise PublishRefused(f"'{role}' is not a role of {kind} (one of {', '.join(roles)})")
    if (changes.rotate or changes.channels) and keys is None:
        raise PublishRefused("a new key is generated into a key directory: pass --keys")
    _check_new_channels(signed, changes.channels)
    for keyid in [_resolve(k, _keys(signed)) for k in changes.remove]:
        for role, info in roles.items():
            if keyid in info.keyids:
                signed.revoke_key(keyid, role)
    for role in changes.rotate:
        for keyid in list(roles[role].keyids):
            signed.revoke_key(keyid, role)
        roles[role].threshold = 1
    for role, key in changes.add:
        if key.keyid in roles[role].keyids:
            raise PublishRefused(f"key {key.keyid[:8]} is already a {role} key")
        signed.add_key(key, role)
    for role, threshold in changes.thresholds.items():
        roles[role].threshold = threshold
    for role, info in roles.items():
        count = len(info.keyids) + (1 if role in changes.rotate else 0)
        if not 1 <= info.threshold <= count:
            raise PublishRefused(f"{role} would need {info.threshold} signature(s) from {count} key(s): impossible")
    generated = []
    for role in changes.rotate:
        assert keys is not None
        key = generate_role_key(keys.directory, role, passphrase)
        signed.add_key(key, role)
        generated.append(key.keyid)
    for channel in changes.channels:
        assert keys is not None and isinstance(signed, Targets) and signed.delegations is not None
        assert signed.delegations.roles is not None
        key = generate_role_key(keys.directory, channel, passphrase)
        signed.delegations.roles[channel] = DelegatedRole(channel, [], 1, True, paths=meta.channel_patterns(channel))
        signed.add_key(key, channel)
        generated.append(key.keyid)
    return generated


def _check_new_channels(signed: Root | Targets, channels: Sequence[str]) -> None:
    """New channels: a name by the one rule (``formats.index.check_channel``), not delegated yet."""
    if not channels:
        return
    if not isinstance(signed, Targets):
        raise PublishRefused("channels are delegated by targets, not root")
    for channel in channels:
        try:
            check_channel(channel)
        except FormatError as exc:
            raise PublishRefused(str(exc)) from None
        if channel in _roles(signed) or channels.count(channel) > 1:
            raise PublishRefused(f"channel '{channel}' already exists")


def prepare(repo: Repository, role: str, changes: KeyChanges, keys: KeyStore | None = None,
            passphrase: PassphraseProvider | None = None, now: datetime | None = None) -> tuple[bytes, dict[str, Any]]:
    """The next, unsigned version of ``role`` (root or targets) with ``changes`` applied.

    Returns the file content (indented JSON, no signatures) and a summary for the operator."""
    now = now or utcnow()
    _check_role(role)
    state = repo.load()
    current = state.root if role == "root" else state.targets
    md = _copy(current)
    days = changes.expires_days if changes.expires_days is not None else repo.config().expiry_days[role]
    if days < 1:
        raise PublishRefused("--expires must be at least 1 day")
    meta.bump(md, meta.expiry(now, days))
    generated = _edit(md, changes, keys, passphrase)
    summary = {"role": role, "version": md.signed.version, "expires": _iso(md.signed.expires),
               "generated_keyids": generated, "roles": _role_summary(md.signed),
               "needs": _needs(state, md)}
    return _PRETTY.serialize(md), summary


def _needs(state: RepoState, md: Metadata) -> list[str]:  # type: ignore[type-arg]
    """Who must sign, in words."""
    if isinstance(md.signed, Root):
        old, new = state.root.signed.roles["root"], md.signed.roles["root"]
        return [f"{old.threshold} of the current root keys {_short(old.keyids)}",
                f"{new.threshold} of the new root keys {_short(new.keyids)}"]
    role = state.root.signed.roles["targets"]
    return [f"{role.threshold} of the targets keys {_short(role.keyids)}"]


def _role_summary(signed: Root | Targets) -> dict[str, Any]:
    return {name: {"threshold": info.threshold, "keyids": list(info.keyids)} for name, info in _roles(signed).items()}


def _short(keyids: Iterable[str]) -> str:
    return ",".join(k[:8] for k in keyids)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_role(role: str) -> None:
    if role not in ("root", "targets"):
        raise PublishRefused(f"only root and targets are signed offline, not '{role}'")


def write_prepared(path: Path, data: bytes) -> None:
    """Write a prepared (or signed) file atomically: a half-written file never replaces a good one."""
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise RepositoryStateError(f"cannot write {path}: {exc.strerror or exc}") from exc


# -- sign -----------------------------------------------------------------------------------------

def _parse(data: bytes, role: str, source: str) -> Metadata:  # type: ignore[type-arg]
    try:
        md = Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise PublishRefused(f"{source} is not TUF metadata: {exc}") from exc
    if md.signed.type != role:
        raise PublishRefused(f"{source} holds {md.signed.type} metadata, not {role}")
    return md


def read_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PublishRefused(f"cannot read {path}: {exc.strerror or exc}") from exc


def sign(data: bytes, role: str, signer: Signer, trusted_root: bytes | None = None,
         source: str = "the file") -> tuple[bytes, dict[str, Any]]:
    """Append ``signer``'s signature to prepared ``role`` metadata; return the new content.

    The key must be one that counts: for root, a root key of the new version or (given the current
    root as ``trusted_root``) of the current one; for targets, a targets key of ``trusted_root``
    when given (without it the check waits for ``publish``). Signing twice with a key is refused.
    """
    _check_role(role)
    md = _parse(data, role, source)
    keyid = signer.public_key.keyid
    allowed: set[str] | None = None
    current = _parse(trusted_root, "root", "the trusted root") if trusted_root is not None else None
    if role == "root":
        allowed = set(md.signed.roles["root"].keyids)
        if current is not None:
            allowed |= set(current.signed.roles["root"].keyids)
    elif current is not None:
        allowed = set(current.signed.roles["targets"].keyids)
    if allowed is not None and keyid not in allowed:
        hint = " (pass --root with the current root to sign with a key this version removes)" if (
            role == "root" and current is None) else ""
        raise PublishRefused(f"key {keyid[:8]} is not a {role} key that can sign {role} v{md.signed.version}{hint}")
    if keyid in md.signatures:
        raise PublishRefused(f"{source} is already signed by key {keyid[:8]}")
    try:
        md.sign(signer, append=True)
    except Exception as exc:
        raise KeyStoreError(f"signing with key {keyid[:8]} failed: {exc}") from exc
    return _PRETTY.serialize(md), {"role": role, "version": md.signed.version, "keyid": keyid,
                                   "signatures": sorted(md.signatures)}


# -- publish --------------------------------------------------------------------------------------

def _require(delegator: Root | Targets, role: str, md: Metadata, whose: str) -> set[str]:  # type: ignore[type-arg]
    """Refuse unless ``md`` carries a threshold of valid signatures from ``delegator``'s ``role``
    keys; return the key ids that signed validly."""
    result = delegator.get_verification_result(role, md.signed_bytes, md.signatures)
    if not result.verified:
        raise PublishRefused(
            f"{md.signed.type} v{md.signed.version} has {len(result.signed)} valid signature(s) from {whose}, "
            f"{result.threshold} required: collect {result.missing} more with 'sign' (nothing was written)"
        )
    return set(result.signed)


def _refuse_strays(md: Metadata, valid: set[str], known: set[str]) -> None:  # type: ignore[type-arg]
    for keyid in sorted(md.signatures):
        if keyid in known and keyid not in valid:
            raise PublishRefused(f"the signature by key {keyid[:8]} does not verify: was the file changed "
                                 "after it was signed? (nothing was written)")
        if keyid not in known:
            raise PublishRefused(f"{md.signed.type} v{md.signed.version} is signed by key {keyid[:8]}, "
                                 "which may not sign it: remove that signature (nothing was written)")


def _check_version(current: Metadata, new: Metadata) -> None:  # type: ignore[type-arg]
    want = current.signed.version + 1
    if new.signed.version != want:
        raise PublishRefused(
            f"stale {new.signed.type}: the file holds v{new.signed.version}, the repository needs v{want} "
            f"(it is at v{current.signed.version}): prepare it again (nothing was written)"
        )


def _check_expiry(new: Metadata, now: datetime) -> None:  # type: ignore[type-arg]
    if new.signed.is_expired(now):
        raise PublishRefused(f"{new.signed.type} v{new.signed.version} expired at {_iso(new.signed.expires)}")


def _changed(old: Root | Targets, new: Root | Targets, names: Iterable[str]) -> list[str]:
    """Roles whose key ids or threshold differ between two versions."""
    before, after = _roles(old), _roles(new)
    return [r for r in names
            if set(before[r].keyids) != set(after[r].keyids) or before[r].threshold != after[r].threshold]


def _need_keys(keys: KeyStore | None, role: str) -> KeyStore:
    if keys is None:
        raise PublishRefused(f"re-signing {role} needs its keys: pass --keys (nothing was written)")
    return keys


def _dual_signers(keys: KeyStore | None, role: str, new: Role, old: Role) -> list[Signer]:
    """A threshold of the role's new keys plus every old key this machine holds, so that the
    re-signed metadata verifies under the old root and the new one alike."""
    signers = _need_keys(keys, role).signers_for(role, new.keyids, new.threshold)
    have = {s.public_key.keyid for s in signers}
    return signers + [s for s in _need_keys(keys, role).available(old.keyids) if s.public_key.keyid not in have]


def _current_signers(keys: KeyStore | None, root: Root, role: str) -> list[Signer]:
    return _need_keys(keys, role).signers_for(role, root.roles[role].keyids, root.roles[role].threshold)


def _commit(repo: Repository, state: RepoState, written: dict[str, tuple[int, bytes]],
            signers: Mapping[str, list[Signer]], now: datetime) -> dict[str, int]:
    """Snapshot listing ``written``, then timestamp (last): the commit point of the new roles."""
    config = repo.config()
    names = list(state.channels)
    bins = {name for name in written if channel_of_bin(name, names)}
    snapshot = meta.snapshot_of(state.snapshot, written, meta.expiry(now, config.days("snapshot", names)), bins)
    snapshot_bytes = repo.write_metadata("snapshot", meta.sign(snapshot, signers["snapshot"]))
    timestamp = meta.timestamp_of(state.timestamp, snapshot.signed.version, snapshot_bytes,
                                  meta.expiry(now, config.days("timestamp", names)), signed_at=now)
    repo.write_metadata("timestamp", meta.sign(timestamp, signers["timestamp"]), versioned=False)
    versions = {name: v for name, (v, _) in written.items()}
    versions.update(snapshot=snapshot.signed.version, timestamp=timestamp.signed.version)
    return versions


def _root_keys(root: Root, role: str) -> list[Key]:
    return [root.keys[k] for k in root.roles[role].keyids]


def publish(repo: Repository, role: str, data: bytes, keys: KeyStore | None = None,
            now: datetime | None = None, source: str = "the file") -> dict[str, Any]:
    """Check a signed root or targets file against the committed repository and publish it.

    Refusals (below threshold, a key that may not sign, a signature that does not verify, a stale
    version, an expired file) leave the repository untouched. Publishing the version that is
    already current is a no-op apart from updating the key directory's role mapping, so a
    ``publish`` that crashed after its commit point can simply be run again.
    """
    now = now or utcnow()
    _check_role(role)
    new = _parse(data, role, source)
    with repo.locked():
        state = repo.load()
        current = state.root if role == "root" else state.targets
        if meta.to_bytes(current) == meta.to_bytes(new):
            result: dict[str, Any] = {"role": role, "version": new.signed.version, "already_published": True,
                                      "metadata_versions": {}}
        else:
            _check_version(current, new)
            publisher = _publish_root if role == "root" else _publish_targets
            result = publisher(repo, state, new, keys, now)  # type: ignore[operator, unused-ignore]
    if keys is not None:
        if role == "root":
            root: Root = new.signed
            mapping = {r: (root.roles[r].threshold, _root_keys(root, r)) for r in TOP_LEVEL_ROLES}
        else:
            delegated = _roles(new.signed)
            known = _keys(new.signed)
            mapping = {r: (info.threshold, [known[k] for k in info.keyids]) for r, info in delegated.items()}
        result["retired_keyids"] = adopt_roles(keys.directory, mapping)
    return result


def _publish_root(repo: Repository, state: RepoState, new: Metadata[Root], keys: KeyStore | None,
                  now: datetime) -> dict[str, Any]:
    current = state.root
    old_valid = _require(current.signed, "root", new, f"the current root v{current.signed.version}'s keys")
    new_valid = _require(new.signed, "root", new, f"its own root keys (v{new.signed.version})")
    _refuse_strays(new, old_valid | new_valid,
                   set(current.signed.roles["root"].keyids) | set(new.signed.roles["root"].keyids))
    if not new.signed.consistent_snapshot:
        raise PublishRefused("the new root turns consistent snapshots off; this repository layout needs them")
    _check_expiry(new, now)
    old_root, new_root = current.signed, new.signed
    changed = _changed(old_root, new_root, ("targets", "snapshot", "timestamp"))
    signers: dict[str, list[Signer]] = {}  # every signer is loaded before the first write
    for r in ("targets", "snapshot", "timestamp") if changed else ():
        if r in changed:
            signers[r] = _dual_signers(keys, r, new_root.roles[r], old_root.roles[r])
        elif r != "targets":
            signers[r] = _current_signers(keys, old_root, r)
    versions: dict[str, int] = {}
    if changed:
        written: dict[str, tuple[int, bytes]] = {}
        if "targets" in changed:
            targets = _copy(state.targets)
            meta.bump(targets, meta.expiry(now, repo.config().expiry_days["targets"]))
            meta.sign(targets, signers["targets"])
            written["targets"] = (targets.signed.version, repo.write_metadata("targets", targets))
        versions = _commit(repo, state, written, signers, now)
    repo.write_metadata("root", new)  # the commit point
    return {"role": "root", "version": new.signed.version, "resigned": sorted(changed),
            "metadata_versions": versions}


def _publish_targets(repo: Repository, state: RepoState, new: Metadata[Targets], keys: KeyStore | None,
                     now: datetime) -> dict[str, Any]:
    current = state.targets
    root = state.root.signed
    valid = _require(root, "targets", new, f"the targets keys of root v{root.version}")
    _refuse_strays(new, valid, set(root.roles["targets"].keyids))
    _check_expiry(new, now)
    if new.signed.targets:
        raise PublishRefused("top-level targets must only delegate; the file lists targets itself")
    removed = sorted(set(state.channels) - set(_roles(new.signed)))
    if removed:
        raise PublishRefused(f"the file no longer delegates {removed}: removing channels is not supported")
    added = [c for c in _roles(new.signed) if c not in state.channels]
    for channel in added:  # one rule for names, however the file was made
        try:
            check_channel(channel)
        except FormatError as exc:
            raise PublishRefused(f"the file delegates a new channel: {exc}") from None
    changed = _changed(current.signed, new.signed, state.channels)
    new_roles = _roles(new.signed)
    channel_signers = {c: _need_keys(keys, c).signers_for(c, new_roles[c].keyids, new_roles[c].threshold)
                       for c in [*changed, *added]}
    online = {r: _current_signers(keys, root, r) for r in ("snapshot", "timestamp")}
    config = repo.config()
    names = list(state.channels)
    written = {"targets": (new.signed.version, repo.write_metadata("targets", new))}
    for channel in added:  # its first version: an empty signed index
        written[channel] = new_channel(repo, channel, channel_signers[channel], config.expiry_days["channel"], now)
    new_keys = _keys(new.signed)
    for channel in changed:
        md = _copy(state.channels[channel])
        archive = Archive(repo, state, channel, md)  # its bins follow the channel's new keys
        archive.rekey(new_roles[channel].keyids, new_roles[channel].threshold, new_keys)
        for bin_name, bin_md in archive.changed().items():
            meta.bump(bin_md, meta.expiry(now, config.days(bin_name, names)))
            meta.sign(bin_md, channel_signers[channel])
            written[bin_name] = (bin_md.signed.version, repo.write_metadata(bin_name, bin_md))
        meta.bump(md, meta.expiry(now, config.days(channel, names)))
        meta.sign(md, channel_signers[channel])
        written[channel] = (md.signed.version, repo.write_metadata(channel, md))
    versions = _commit(repo, state, written, online, now)
    return {"role": "targets", "version": new.signed.version, "resigned": sorted(changed), "added": added,
            "metadata_versions": versions}
