"""The key directory: ed25519 keys per TUF role, private halves encrypted at rest.

``keys.json`` holds only public material and the role -> key mapping; each private key is a
PKCS#8 PEM file (0600) encrypted with a passphrase unless the caller explicitly asked for
plaintext (demo and tests). Signers are loaded one role at a time, when an operation needs
them, so a machine without the offline keys (root, targets) can still publish.

A key entry may carry a securesystemslib private key URI (``"uri": "awskms:..."``, ``"hsm:..."``,
``"file2:/path.pem"``) instead of a PEM file: the signer then comes from
``Signer.from_priv_key_uri``, so KMS and HSM keys plug in without project code. Entries with
neither are public keys held elsewhere (other root holders, offline keys): ``status`` can still
name them, nothing here can sign with them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from pinnacle_updates._lean_imports import restore_aws_kms_signer
from pinnacle_updates.formats import boundedjson
from pinnacle_updates.formats.fsutil import atomic_write, read_regular
from pinnacle_updates.formats.index import CHANNELS, FormatError, check_channel

from .errors import KeyStoreError

KEYS_FORMAT = 1
KEYS_FILE = "keys.json"
KEYS_MAX = 16 << 20
"""Bytes of ``keys.json`` or a public key file read at most (a key entry is under 1 KiB)."""
PASSPHRASE_ENV = "PINNACLE_KEY_PASSPHRASE"
TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")

# Asked with the role name when a key is encrypted and no passphrase is in the environment.
PassphraseProvider = Callable[[str], str | None]


def env_passphrase(role: str) -> str | None:
    """``PINNACLE_KEY_PASSPHRASE_<ROLE>`` wins over ``PINNACLE_KEY_PASSPHRASE``."""
    return os.environ.get(f"{PASSPHRASE_ENV}_{role.upper()}") or os.environ.get(PASSPHRASE_ENV)


@dataclass(frozen=True)
class KeyEntry:
    keyid: str
    role: str
    name: str
    public: SSlibKey
    private_file: str
    encrypted: bool
    uri: str | None = None
    retired: bool = False


@dataclass(frozen=True)
class RoleKeys:
    role: str
    threshold: int
    keyids: tuple[str, ...]


class KeyStore:
    """Read access to a key directory; signers are created on demand and cached."""

    def __init__(
        self, directory: Path, passphrase: PassphraseProvider | None = None
    ) -> None:
        self.directory = Path(directory)
        self._passphrase = passphrase or env_passphrase
        self._signers: dict[str, Signer] = {}
        path = self.directory / KEYS_FILE
        try:
            doc = _read_keys_file(path)
        except FileNotFoundError as exc:
            raise KeyStoreError(
                f"no key directory at {self.directory} (create one with 'pinnacle-release keys init')"
            ) from exc
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"{path} is unreadable: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != KEYS_FORMAT:
            raise KeyStoreError(f"{path}: unsupported key directory format")
        try:
            self.keys = {
                keyid: KeyEntry(
                    keyid=keyid,
                    role=k["role"],
                    name=k["name"],
                    public=SSlibKey.from_dict(keyid, dict(k["public"])),
                    private_file=k.get("private") or "",
                    encrypted=bool(k.get("encrypted", False)),
                    uri=k.get("uri"),
                    retired=bool(k.get("retired", False)),
                )
                for keyid, k in doc["keys"].items()
            }
            self.roles = {
                role: RoleKeys(role, int(r["threshold"]), tuple(r["keyids"]))
                for role, r in doc["roles"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyStoreError(f"{path}: malformed ({exc})") from exc

    @property
    def passphrase(self) -> PassphraseProvider:
        return self._passphrase

    @property
    def channels(self) -> list[str]:
        return [r for r in self.roles if r not in TOP_LEVEL_ROLES]

    def role(self, role: str) -> RoleKeys:
        try:
            return self.roles[role]
        except KeyError:
            raise KeyStoreError(f"the key directory has no keys for role '{role}'") from None

    def public_keys(self, role: str) -> list[SSlibKey]:
        return [self.keys[k].public for k in self.role(role).keyids]

    def signers(self, role: str) -> list[Signer]:
        """Signers for ``role``: every key whose private file is present, at least the threshold.

        Keys absent from this directory are taken to be held offline elsewhere; fewer than the
        threshold present is an error that says so.
        """
        info = self.role(role)
        return self.signers_for(role, info.keyids, info.threshold)

    def signers_for(self, role: str, keyids: Iterable[str], threshold: int) -> list[Signer]:
        """Signers for the given key ids (as a repository's metadata names them), at least ``threshold``."""
        found = self.available(keyids)
        if len(found) < threshold:
            raise KeyStoreError(
                f"role '{role}' needs {threshold} key(s) to sign but only {len(found)} private key(s) "
                f"are in {self.directory} (offline keys must be brought in to sign {role})"
            )
        return found

    def available(self, keyids: Iterable[str]) -> list[Signer]:
        """Signers for those of ``keyids`` whose private half this directory holds (file or URI)."""
        return [self._signer(self.keys[k]) for k in keyids if k in self.keys and self.has_private(self.keys[k])]

    def describe(self) -> list[dict[str, str]]:
        """Who can sign what: every key with its role, state (active in the role mapping, pending
        until published metadata trusts it, or retired) and where its private half is."""
        rows = []
        for entry in self.keys.values():
            role = self.roles.get(entry.role)
            state = "active" if role and entry.keyid in role.keyids else "retired" if entry.retired else "pending"
            private = (entry.uri.partition(":")[0] + ":" if entry.uri
                       else entry.private_file if self.has_private(entry) else "offline")
            rows.append({"role": entry.role, "name": entry.name, "keyid": entry.keyid, "state": state,
                         "private": private})
        return sorted(rows, key=lambda r: (r["role"], r["state"], r["name"]))

    def has_private(self, entry: KeyEntry) -> bool:
        return entry.uri is not None or (bool(entry.private_file) and (self.directory / entry.private_file).exists())

    def _signer(self, entry: KeyEntry) -> Signer:
        cached = self._signers.get(entry.keyid)
        if cached is not None:
            return cached
        if entry.uri is not None:
            signer = signer_from_uri(entry.uri, entry.public)
        else:
            secret = self._passphrase(entry.role) if entry.encrypted else None
            if entry.encrypted and not secret:
                raise KeyStoreError(
                    f"key {entry.name} is encrypted: set {PASSPHRASE_ENV} or enter the passphrase"
                )
            signer = load_pem_signer(self.directory / entry.private_file, secret, entry.public, entry.name)
        self._signers[entry.keyid] = signer
        return signer


def load_pem_signer(path: Path, passphrase: str | None, public: SSlibKey | None = None,
                    name: str | None = None) -> Signer:
    """A signer from a PKCS#8 PEM private key file (encrypted when ``passphrase`` is given).

    Without ``public`` the public key is derived from the private one (signing on a machine that
    has only the key file). Every failure is a one-line ``KeyStoreError`` that never holds the secret.
    """
    name = name or str(path)
    try:
        pem = read_regular(Path(path), KEYS_MAX, follow=True)  # a FIFO there must not hang
    except OSError as exc:
        raise KeyStoreError(f"cannot read private key {path}: {exc.strerror}") from exc
    try:
        private_key = load_pem_private_key(pem, passphrase.encode() if passphrase else None)
    except TypeError as exc:
        hint = "it is encrypted: set " + PASSPHRASE_ENV if passphrase is None else "it is not encrypted"
        raise KeyStoreError(f"cannot load key {name}: {hint}") from exc
    except ValueError as exc:
        # The exception text never includes the secret; keep it out of the message all the same.
        raise KeyStoreError(f"cannot decrypt key {name}: wrong passphrase or damaged file") from exc
    try:
        return CryptoSigner(private_key, public)  # type: ignore[arg-type, unused-ignore]
    except Exception as exc:
        raise KeyStoreError(f"key {name} does not match its public key in {KEYS_FILE}") from exc


def key_file_signer(path: Path, role: str, passphrase: PassphraseProvider | None = None) -> Signer:
    """A signer from a key holder's PEM file; the passphrase is asked for only when it is encrypted."""
    try:
        encrypted = b"ENCRYPTED" in read_regular(Path(path), KEYS_MAX, follow=True)[:64]
    except OSError as exc:
        raise KeyStoreError(f"cannot read private key {path}: {exc.strerror}") from exc
    secret = (passphrase or env_passphrase)(role) if encrypted else None
    if encrypted and not secret:
        raise KeyStoreError(f"key {path} is encrypted: set {PASSPHRASE_ENV} or enter the passphrase")
    return load_pem_signer(path, secret)


def signer_from_uri(uri: str, public: SSlibKey) -> Signer:
    """Any securesystemslib signer (file2:, awskms:, gcpkms:, azurekms:, hsm:, ...) for ``public``."""
    if uri.startswith("awskms:"):
        restore_aws_kms_signer()  # securesystemslib was imported with boto3 hidden (start-up time)
    try:
        return Signer.from_priv_key_uri(uri, public)
    except Exception as exc:
        scheme = uri.partition(":")[0]
        raise KeyStoreError(f"cannot load the {scheme}: signer for key {public.keyid[:8]}: {exc}") from exc


def load_public_key(path: Path) -> SSlibKey:
    """A public key from a file: our JSON form (``keys generate`` writes it) or a PEM public key."""
    try:
        data = read_regular(Path(path), KEYS_MAX, follow=True)
    except OSError as exc:
        raise KeyStoreError(f"cannot read public key {path}: {exc.strerror}") from exc
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return SSlibKey.from_crypto(load_pem_public_key(data))  # type: ignore[arg-type, unused-ignore]
        doc = boundedjson.load_object(data, str(path), max_bytes=KEYS_MAX)
        return SSlibKey.from_dict(doc.pop("keyid"), doc)
    except Exception as exc:
        raise KeyStoreError(f"{path} is not a public key (JSON from 'keys generate' or PEM): {exc}") from exc


def public_key_bytes(key: SSlibKey) -> bytes:
    return json.dumps({"keyid": key.keyid, **key.to_dict()}, indent=2, sort_keys=True).encode() + b"\n"


def write_private_key(path: Path, passphrase: str | None) -> SSlibKey:
    """Generate an ed25519 key, write its private half to ``path`` (0600, encrypted unless
    ``passphrase`` is None) and return the public key."""
    signer = CryptoSigner.generate_ed25519()
    encryption = BestAvailableEncryption(passphrase.encode()) if passphrase else NoEncryption()
    pem = signer._private_key.private_bytes(  # the public API only offers unencrypted PEM
        Encoding.PEM, PrivateFormat.PKCS8, encryption
    )
    atomic_write(path, pem, mode=0o600)
    return signer.public_key


# -- editing a key directory (rotation, imports, adopting what a published root says) ---------

def _read_doc(directory: Path) -> dict[str, Any]:
    KeyStore(directory)  # validates and gives the one error for a missing directory
    return _read_keys_file(Path(directory) / KEYS_FILE)


def _read_keys_file(path: Path) -> dict[str, Any]:
    """``keys.json``: a regular file (a planted FIFO would hang; a link is followed, as secret
    mounts use them), bounded JSON (``FormatError``)."""
    return boundedjson.load_object(read_regular(path, KEYS_MAX, follow=True), KEYS_FILE, max_bytes=KEYS_MAX)


def _write_doc(directory: Path, doc: dict[str, Any]) -> None:
    atomic_write(Path(directory) / KEYS_FILE, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)


def generate_role_key(directory: Path, role: str, passphrase: PassphraseProvider | None = None) -> SSlibKey:
    """Add a new key for ``role`` to the directory, not yet in the role's mapping (a pending key:
    it signs only once published metadata trusts it, see :func:`adopt_roles`).

    The key is encrypted when the directory's keys are, with the role's passphrase."""
    directory = Path(directory)
    doc = _read_doc(directory)
    encrypted = any(k.get("encrypted") for k in doc["keys"].values())
    secret = (passphrase or env_passphrase)(role) if encrypted else None
    if encrypted and not secret:
        raise KeyStoreError(f"the keys in {directory} are encrypted: set {PASSPHRASE_ENV} for the new {role} key")
    names = {k["name"] for k in doc["keys"].values()}
    n = 1
    while f"{role}-{n}" in names or (directory / f"{role}-{n}.pem").exists():
        n += 1
    name = f"{role}-{n}"
    key = write_private_key(directory / f"{name}.pem", secret)
    doc["keys"][key.keyid] = {"role": role, "name": name, "public": key.to_dict(), "private": f"{name}.pem",
                              "encrypted": encrypted}
    _write_doc(directory, doc)
    return key


def import_key(directory: Path, role: str, key: SSlibKey, uri: str | None = None) -> None:
    """Record a public key for ``role`` (pending, like a generated one), optionally with the
    signer URI that reaches its private half (KMS, HSM, ``file2:``)."""
    doc = _read_doc(directory)
    entry = doc["keys"].get(key.keyid) or {"role": role, "name": f"{role}-{key.keyid[:8]}",
                                           "public": key.to_dict(), "private": "", "encrypted": False}
    if uri is not None:
        entry["uri"] = uri
    doc["keys"][key.keyid] = entry
    _write_doc(directory, doc)


def adopt_roles(directory: Path, roles: Mapping[str, tuple[int, Sequence[Key]]]) -> list[str]:
    """Make the directory's role mapping what published metadata says (``role -> (threshold,
    keys)``); keys it does not know are recorded as public-only. Returns the key ids that left a
    role (retired: they never sign for it again)."""
    doc = _read_doc(directory)
    retired: list[str] = []
    for role, (threshold, keys) in roles.items():
        old = doc["roles"].get(role, {}).get("keyids", [])
        new = [k.keyid for k in keys]
        retired += [k for k in old if k not in new]
        for key in keys:
            doc["keys"].setdefault(key.keyid, {"role": role, "name": f"{role}-{key.keyid[:8]}",
                                               "public": key.to_dict(), "private": "", "encrypted": False})
        doc["roles"][role] = {"threshold": threshold, "keyids": new}
    for keyid in retired:
        if not any(keyid in r["keyids"] for r in doc["roles"].values()):
            doc["keys"][keyid]["retired"] = True
    _write_doc(directory, doc)
    return retired


def create_keys(
    directory: Path,
    passphrase: str | None,
    root_threshold: int = 1,
    root_keys: int = 1,
    channels: Iterable[str] = CHANNELS,
    force: bool = False,
) -> dict[str, Any]:
    """Generate a new key directory; return a public summary (role -> threshold, key ids).

    ``passphrase`` None means plaintext keys: the caller must have asked for that explicitly.
    """
    if root_keys < 1 or not 1 <= root_threshold <= root_keys:
        raise KeyStoreError(f"root threshold {root_threshold} of {root_keys} keys is impossible")
    if passphrase is not None and not passphrase:
        raise KeyStoreError("the passphrase is empty")
    try:
        channel_list = [check_channel(c) for c in channels]
    except FormatError as exc:
        raise KeyStoreError(str(exc)) from None
    if len(set(channel_list)) != len(channel_list):
        raise KeyStoreError("a channel is named twice")
    directory = Path(directory)
    if (directory / KEYS_FILE).exists() and not force:
        raise KeyStoreError(f"{directory / KEYS_FILE} already exists; refusing to overwrite keys")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)

    keys: dict[str, Any] = {}
    roles: dict[str, Any] = {}
    plan = [("root", root_keys, root_threshold)] + [(r, 1, 1) for r in TOP_LEVEL_ROLES[1:]]
    plan += [(c, 1, 1) for c in channel_list]
    for role, count, threshold in plan:
        keyids = []
        for n in range(1, count + 1):
            name = f"{role}-{n}"
            key = write_private_key(directory / f"{name}.pem", passphrase)
            keys[key.keyid] = {
                "role": role,
                "name": name,
                "public": key.to_dict(),
                "private": f"{name}.pem",
                "encrypted": passphrase is not None,
            }
            keyids.append(key.keyid)
        roles[role] = {"threshold": threshold, "keyids": keyids}
    _write_doc(directory, {"format": KEYS_FORMAT, "roles": roles, "keys": keys})
    return {"directory": str(directory), "encrypted": passphrase is not None, "roles": roles}
