"""Trust-operation commands of ``pinnacle-release``: thin click wrappers.

``keys init|generate|import|list|rotate`` (key directories, key sources and rotation),
``root prepare|sign|publish`` and ``targets prepare|sign|publish`` (offline, threshold signing),
``sync`` (ordered upload). The logic lives in ``repo_tools.keys``, ``repo_tools.rootsign``,
``repo_tools.rotate``, ``repo_tools.sync`` and ``repo_tools.objectstore``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pinnacle_updates.formats import progress
from pinnacle_updates.formats.cliutil import emit
from pinnacle_updates.formats.exitcodes import ExitCode
from pinnacle_updates.formats.index import CHANNELS

from .. import rootsign
from ..keys import (
    PASSPHRASE_ENV,
    KeyStore,
    create_keys,
    import_key,
    key_file_signer,
    load_public_key,
    public_key_bytes,
    signer_from_uri,
    write_private_key,
)
from ..objectstore import DEFAULT_JOBS as DEFAULT_S3_JOBS
from ..objectstore import sync_to
from ..rotate import rotate_key
from ..store import Repository
from ..sync import file_progress
from .options import (
    PROGRAM,
    ReleaseGroup,
    failure,
    json_option,
    keys_option,
    keystore,
    optional_keys_option,
    output_option,
    pending_text,
    prompt_passphrase,
    repo_argument,
)


# ----- keys ---------------------------------------------------------------------------------------
@click.group("keys", cls=ReleaseGroup)
def keys() -> None:
    """Manage signing keys."""


@keys.command("init")
@click.argument("keys_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--root-threshold", default=1, show_default=True, help="Root signatures required.")
@click.option("--root-keys", default=1, show_default=True, help="Root keys to create.")
@click.option("--insecure-plaintext", is_flag=True, help="Store private keys unencrypted (demo and tests only).")
@click.option("--force", is_flag=True, help="Overwrite an existing key directory.")
@click.option("--channel", "channels", multiple=True,
              help="A channel to create (repeatable; default: stable, beta, alpha). Later: `channel add`.")
@json_option
def keys_init(
    keys_dir: Path, root_threshold: int, root_keys: int, insecure_plaintext: bool, force: bool,
    channels: tuple[str, ...], as_json: bool,
) -> None:
    """Create ed25519 keys for root, targets, snapshot, timestamp and each channel."""
    passphrase: str | None = None
    if not insecure_plaintext:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if not passphrase:
            if not sys.stdin.isatty():
                raise failure(f"set {PASSPHRASE_ENV} or pass --insecure-plaintext (no terminal to prompt on)")
            passphrase = click.prompt(
                "Passphrase for the new keys", hide_input=True, confirmation_prompt=True, err=True
            )
    summary = create_keys(keys_dir, passphrase, root_threshold, root_keys, channels or CHANNELS, force=force)
    lines = [f"keys written to {keys_dir} ({'encrypted' if passphrase else 'PLAINTEXT, demo only'})"]
    for role, info in summary["roles"].items():
        lines.append(f"  {role}: {len(info['keyids'])} key(s), threshold {info['threshold']}")
    emit(as_json, summary, "\n".join(lines))


@keys.command("generate")
@click.argument("pem_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--insecure-plaintext", is_flag=True, help="Store the private key unencrypted (tests only).")
@json_option
def keys_generate(pem_file: Path, insecure_plaintext: bool, as_json: bool) -> None:
    """Create one key pair for a key holder: PEM_FILE and PEM_FILE's .pub.json next to it."""
    if pem_file.exists():
        raise failure(f"{pem_file} exists; refusing to overwrite a key", ExitCode.REFUSED)
    passphrase = None if insecure_plaintext else os.environ.get(PASSPHRASE_ENV)
    if not insecure_plaintext and not passphrase:
        raise failure(f"set {PASSPHRASE_ENV} or pass --insecure-plaintext")
    key = write_private_key(pem_file, passphrase)
    public = pem_file.with_suffix(".pub.json")
    public.write_bytes(public_key_bytes(key))
    emit(as_json, {"keyid": key.keyid, "private": str(pem_file), "public": str(public)},
         f"key {key.keyid[:8]}: private {pem_file}, public {public} (give the public file to the release team)")


@keys.command("import")
@click.argument("keys_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--role", required=True)
@click.option("--public", "public_file", required=True, type=click.Path(dir_okay=False, exists=True,
                                                                        path_type=Path))
@click.option("--uri", default=None, help="Signer URI of the private half (KMS, HSM, file2:...).")
@json_option
def keys_import(keys_dir: Path, role: str, public_file: Path, uri: str | None, as_json: bool) -> None:
    """Record a public key (and optionally its signer URI); it signs once published metadata trusts it."""
    key = load_public_key(public_file)
    import_key(keys_dir, role, key, uri)
    emit(as_json, {"keyid": key.keyid, "role": role, "uri": uri},
         f"recorded {role} key {key.keyid[:8]}{' via ' + uri.partition(':')[0] if uri else ''} in {keys_dir}")


@keys.command("list")
@click.argument("keys_dir", type=click.Path(file_okay=False, path_type=Path))
@json_option
def keys_list(keys_dir: Path, as_json: bool) -> None:
    """Every key the directory knows: role, name, id, state, where its private half is."""
    rows = KeyStore(keys_dir).describe()
    emit(as_json, rows, "\n".join(f"{r['role']:<10} {r['name']:<18} {r['keyid'][:16]} {r['state']:<8} {r['private']}"
                                  for r in rows))


@keys.command("rotate")
@repo_argument
@keys_option
@click.argument("role")
@output_option
@json_option
def keys_rotate(repo_dir: Path, keys_dir: Path, role: str, output: Path | None, as_json: bool) -> None:
    """Replace ROLE's key by a new one (after a leak: the old key is refused from then on)."""
    result = rotate_key(Repository(repo_dir), keystore(keys_dir), role, output)
    if result["published"]:
        human = (f"rotated {role}: new key {result['new_keyid'][:8]}, published {result['via']} "
                 f"v{result['version'][result['via']]}; retired {', '.join(k[:8] for k in result['retired_keyids'])}")
    else:
        human = pending_text(f"new {role} key {result['new_keyid'][:8]} is pending", result)
    emit(as_json, result, human)


# ----- root and targets: offline threshold signing ------------------------------------------------
def _pairs(values: tuple[str, ...], default_role: str | None, option: str) -> list[tuple[str, str]]:
    """``ROLE=VALUE`` or plain ``VALUE`` (for ``default_role``, when there is one)."""
    out = []
    for value in values:
        role, sep, rest = value.partition("=")
        if not (rest if sep else default_role):
            raise failure(f"{option} takes {'[ROLE=]' if default_role else 'ROLE='}VALUE, got '{value}'")
        out.append((role, rest) if sep else (str(default_role), value))
    return out


def _signing_group(role: str, default_role: str | None, what: str) -> click.Group:
    """``<role> prepare|sign|publish``: the same three steps for root and top-level targets."""
    default_help = f" (default role: {default_role})" if default_role else ""

    @click.group(role, cls=ReleaseGroup, help=f"Offline, threshold signing of {what}: prepare -> sign -> publish.")
    def group() -> None:
        pass

    @group.command("prepare")
    @repo_argument
    @optional_keys_option
    @click.option("--add-key", multiple=True, metavar="[ROLE=]PUBFILE" if default_role else "ROLE=PUBFILE",
                  help=f"Add a public key (JSON from 'keys generate', or PEM) to ROLE{default_help}.")
    @click.option("--remove-key", multiple=True, metavar="KEYID", help="Remove a key (id or 8+ char prefix).")
    @click.option("--threshold", multiple=True, metavar="[ROLE=]N" if default_role else "ROLE=N",
                  help=f"Signatures ROLE needs{default_help}.")
    @click.option("--rotate", multiple=True, metavar="ROLE",
                  help="Replace ROLE's keys by one new key generated into --keys.")
    @click.option("--expires", "expires_days", type=int, default=None, metavar="DAYS",
                  help=f"Validity of the new {role} version (default: the repository's {role} period).")
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="Where to write the unsigned next version.")
    @json_option
    def prepare(repo_dir: Path, keys_dir: Path | None, add_key: tuple[str, ...], remove_key: tuple[str, ...],
                threshold: tuple[str, ...], rotate: tuple[str, ...], expires_days: int | None, output: Path,
                as_json: bool) -> None:
        """Write the next version of the role, unsigned; no private key is needed."""
        thresholds = {}
        for r, n in _pairs(threshold, default_role, "--threshold"):
            if not n.isdigit():
                raise failure(f"--threshold takes [ROLE=]N, got '{n}'")
            thresholds[r] = int(n)
        changes = rootsign.KeyChanges(
            add=[(r, load_public_key(Path(f))) for r, f in _pairs(add_key, default_role, "--add-key")],
            remove=list(remove_key), thresholds=thresholds, rotate=list(rotate), expires_days=expires_days)
        data, summary = rootsign.prepare(Repository(repo_dir), role, changes,
                                         keystore(keys_dir) if keys_dir else None, prompt_passphrase)
        rootsign.write_prepared(output, data)
        summary["file"] = str(output)
        emit(as_json, summary, f"wrote unsigned {role} v{summary['version']} to {output} "
                               f"(expires {summary['expires']}); it needs signatures from "
                               + " and ".join(summary["needs"]))

    @group.command("sign")
    @click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
    @click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help=f"PEM private key (passphrase from {PASSPHRASE_ENV} or a prompt).")
    @click.option("--key-uri", help="securesystemslib signer URI (file2:, awskms:, gcpkms:, hsm:, ...).")
    @click.option("--public-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="The public key of --key-uri.")
    @click.option("--root", "trusted_root", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="The current root.json: checks the key may sign (needed to sign root with a removed key).")
    @json_option
    def sign(file: Path, key_file: Path | None, key_uri: str | None, public_key: Path | None,
             trusted_root: Path | None, as_json: bool) -> None:
        """Append one signature to FILE; needs the key, not the repository."""
        if (key_file is None) == (key_uri is None):
            raise failure("pass exactly one of --key PEMFILE or --key-uri URI")
        if key_uri is not None:
            if public_key is None:
                raise failure("--key-uri needs --public-key PUBFILE")
            signer = signer_from_uri(key_uri, load_public_key(public_key))
        else:
            assert key_file is not None
            signer = key_file_signer(key_file, role, prompt_passphrase)
        trusted = rootsign.read_file(trusted_root) if trusted_root else None
        data, summary = rootsign.sign(rootsign.read_file(file), role, signer, trusted, source=str(file))
        rootsign.write_prepared(file, data)
        emit(as_json, summary, f"signed {role} v{summary['version']} with key {summary['keyid'][:8]} "
                               f"({len(summary['signatures'])} signature(s) now)")

    @group.command("publish")
    @repo_argument
    @click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
    @optional_keys_option
    @json_option
    def publish(repo_dir: Path, file: Path, keys_dir: Path | None, as_json: bool) -> None:
        """Check FILE's signatures against the thresholds and publish it."""
        result = rootsign.publish(Repository(repo_dir), role, rootsign.read_file(file),
                                  keystore(keys_dir) if keys_dir else None, source=str(file))
        if result.get("already_published"):
            updated = " (key directory updated)" if keys_dir else ""
            human = f"{role} v{result['version']} is already published{updated}"
        else:
            resigned = f"; re-signed {', '.join(result['resigned'])}" if result["resigned"] else ""
            human = f"published {role} v{result['version']}{resigned}"
        emit(as_json, result, human)

    return group


root = _signing_group("root", "root", "root (keys and thresholds of root, targets, snapshot, timestamp)")
targets = _signing_group("targets", None, "top-level targets (the channel delegations and their keys)")


# ----- sync ---------------------------------------------------------------------------------------
@click.command("sync")
@repo_argument
@click.argument("dest")
@click.option("--verbose", is_flag=True, help="One line per file, as it is done.")
@click.option("--dry-run", is_flag=True, help="Only say what would be copied.")
@click.option("--endpoint-url", default=None, help="s3://: the S3 API of a store other than AWS (or AWS_ENDPOINT_URL).")
@click.option("--prune", is_flag=True, help="s3://: then delete the metadata versions `prune` would delete.")
@click.option("--jobs", type=click.IntRange(min=1), default=DEFAULT_S3_JOBS, show_default=True,
              help="s3://: uploads in flight at once.")
@json_option
def sync_cmd(repo_dir: Path, dest: str, verbose: bool, dry_run: bool, endpoint_url: str | None, prune: bool,
             jobs: int, as_json: bool) -> None:
    """Copy REPO_DIR to DEST (a directory, a mounted bucket or s3://BUCKET/PREFIX): targets, roles, root,
    snapshot, timestamp last. s3:// credentials come from the AWS environment variables or profiles."""

    def verbose_line(action: str, relative: str) -> None:
        click.echo(f"{action} {relative}")

    shown = progress.for_cli(PROGRAM, as_json)
    result, line = sync_to(repo_dir, dest, endpoint_url=endpoint_url,
                           progress=file_progress(repo_dir, shown, verbose_line if verbose else None),
                           dry_run=dry_run, prune=prune, jobs=jobs)
    shown.result(result, line)


COMMANDS: tuple[click.Command, ...] = (keys, root, targets, sync_cmd)
