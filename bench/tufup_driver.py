"""Drive tufup 0.10.0 for bench/delta.py, inside the bench's own venv (bench/.cache/tufup-venv), never the project's.

    python tufup_driver.py init WORK                      # repository + keys in WORK (as `tufup init` would)
    python tufup_driver.py add WORK VERSION BUNDLE_DIR    # what `tufup targets add VERSION BUNDLE_DIR KEYS` does
    python tufup_driver.py update WORK URL OLD [CLIENT]    # tufup's Client: refresh, download, patch, install

Each command uses tufup's public API exactly as its CLI and README do, but lets exceptions escape (tufup's CLI logs
and exits 0 on failure), so the bench notices a failed step. ``update`` prints one JSON line with what was downloaded.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

APP = "bench"


def init(work: pathlib.Path) -> None:
    """A fresh tufup repository in ``work`` with unencrypted keys (defaults otherwise)."""
    from tufup.repo import Repository

    os.chdir(work)
    repo = Repository(app_name=APP, repo_dir=work / "repo", keys_dir=work / "keystore")
    repo.save_config()
    repo.initialize()


def add(work: pathlib.Path, version: str, bundle: pathlib.Path) -> None:
    """Archive ``bundle`` (tar.gz), bsdiff4 patch from the previous archive, sign, publish (`tufup targets add`)."""
    from tufup.repo import Repository

    os.chdir(work)
    repo = Repository.from_config()
    repo.add_bundle(new_bundle_dir=bundle, new_version=version)
    repo.publish_changes(private_key_dirs=[repo.keys_dir])


def _install(src_dir: pathlib.Path, dst_dir: pathlib.Path, **_: object) -> None:
    """tufup's install step on Linux (its own script supports only Windows/macOS): purge the app dir, move files in."""
    src, dst = pathlib.Path(src_dir), pathlib.Path(dst_dir)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        shutil.move(str(entry), str(dst / entry.name))


def update(work: pathlib.Path, url: str, old_version: str, client_name: str) -> None:
    """Update the client in ``work/CLIENT`` from ``old_version`` to the newest release with tufup's Client."""
    from tufup.client import Client

    client_dir = work / client_name
    started = time.perf_counter()
    client = Client(
        app_name=APP,
        app_install_dir=client_dir / "app",
        current_version=old_version,
        metadata_dir=client_dir / "metadata",
        metadata_base_url=url.rstrip("/") + "/metadata/",
        target_dir=client_dir / "targets",
        target_base_url=url.rstrip("/") + "/targets/",
        extract_dir=client_dir / "extract",
        refresh_required=True,
    )
    new = client.check_for_updates()
    if new is None:
        raise SystemExit("tufup client found no update")
    chosen = {str(meta): info.length for meta, info in client.new_targets.items()}
    client.download_and_apply_update(skip_confirmation=True, install=_install)
    installed = client_dir / "app"
    if not installed.is_dir() or not any(installed.iterdir()):
        raise SystemExit("tufup client did not install the update (see its log above)")
    seconds = time.perf_counter() - started
    print(json.dumps({"version": str(new.version), "targets": chosen, "bytes": sum(chosen.values()),
                      "seconds": round(seconds, 3)}))


def main() -> None:
    """Dispatch one command (see the module doc)."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cmd, work = sys.argv[1], pathlib.Path(sys.argv[2]).resolve()
    if cmd == "init":
        init(work)
    elif cmd == "add":
        add(work, sys.argv[3], pathlib.Path(sys.argv[4]).resolve())
    elif cmd == "update":
        update(work, sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "client")
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
