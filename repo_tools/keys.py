"""The key directory: ed25519 keys per TUF role, private halves encrypted at rest.

``keys.json`` holds only public material and the role -> key mapping; each private key is a
PKCS#8 PEM file (0600) encrypted with a passphrase unless the caller explicitly asked for
plaintext (demo and tests). Signers are loaded one role at a time, when an operation needs
them, so a machine without the offline keys (root, targets) can still publish.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

from client.fsutil import atomic_write
from client.index import CHANNELS, check_channel

from .errors import KeyStoreError

KEYS_FORMAT = 1
KEYS_FILE = "keys.json"
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
            doc = json.loads(path.read_bytes())
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
                    private_file=k["private"],
                    encrypted=bool(k["encrypted"]),
                )
                for keyid, k in doc["keys"].items()
            }
            self.roles = {
                role: RoleKeys(role, int(r["threshold"]), tuple(r["keyids"]))
                for role, r in doc["roles"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"{path}: malformed ({exc})") from exc

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
        found: list[Signer] = []
        for keyid in info.keyids:
            entry = self.keys[keyid]
            if (self.directory / entry.private_file).exists():
                found.append(self._signer(entry))
        if len(found) < info.threshold:
            raise KeyStoreError(
                f"role '{role}' needs {info.threshold} key(s) to sign but only {len(found)} private key(s) "
                f"are in {self.directory} (offline keys must be brought in to sign {role})"
            )
        return found

    def _signer(self, entry: KeyEntry) -> Signer:
        cached = self._signers.get(entry.keyid)
        if cached is not None:
            return cached
        path = self.directory / entry.private_file
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"cannot read private key {path}: {exc.strerror}") from exc
        password: bytes | None = None
        if entry.encrypted:
            secret = self._passphrase(entry.role)
            if not secret:
                raise KeyStoreError(
                    f"key {entry.name} is encrypted: set {PASSPHRASE_ENV} or enter the passphrase"
                )
            password = secret.encode()
        try:
            private_key = load_pem_private_key(pem, password)
        except (TypeError, ValueError) as exc:
            # The exception text never includes the secret; keep it out of the message all the same.
            raise KeyStoreError(f"cannot decrypt key {entry.name}: wrong passphrase or damaged file") from exc
        try:
            signer = CryptoSigner(private_key, entry.public)
        except Exception as exc:
            raise KeyStoreError(f"key {entry.name} does not match its public key in {KEYS_FILE}") from exc
        self._signers[entry.keyid] = signer
        return signer


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
    channel_list = [check_channel(c) for c in channels]
    directory = Path(directory)
    if (directory / KEYS_FILE).exists() and not force:
        raise KeyStoreError(f"{directory / KEYS_FILE} already exists; refusing to overwrite keys")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)

    encryption = BestAvailableEncryption(passphrase.encode()) if passphrase else NoEncryption()
    keys: dict[str, Any] = {}
    roles: dict[str, Any] = {}
    plan = [("root", root_keys, root_threshold)] + [(r, 1, 1) for r in TOP_LEVEL_ROLES[1:]]
    plan += [(c, 1, 1) for c in channel_list]
    for role, count, threshold in plan:
        keyids = []
        for n in range(1, count + 1):
            signer = CryptoSigner.generate_ed25519()
            name = f"{role}-{n}"
            pem = signer._private_key.private_bytes(  # the public API only offers unencrypted PEM
                Encoding.PEM, PrivateFormat.PKCS8, encryption
            )
            atomic_write(directory / f"{name}.pem", pem, mode=0o600)
            key = signer.public_key
            keys[key.keyid] = {
                "role": role,
                "name": name,
                "public": key.to_dict(),
                "private": f"{name}.pem",
                "encrypted": passphrase is not None,
            }
            keyids.append(key.keyid)
        roles[role] = {"threshold": threshold, "keyids": keyids}
    doc = {"format": KEYS_FORMAT, "roles": roles, "keys": keys}
    atomic_write(directory / KEYS_FILE, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)
    return {"directory": str(directory), "encrypted": passphrase is not None, "roles": roles}
