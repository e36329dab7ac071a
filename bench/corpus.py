"""Benchmark corpus: consecutive real releases of public packages, downloaded and unpacked once.

Packages come from PyPI (``pip download``, manylinux x86_64 / CPython 3.11 wheels) and npm (``npm pack``),
through their ordinary clients, into ``bench/.cache/`` (git-ignored). A wheel is a zip and an npm package a
tgz; each is unpacked to a directory that plays the role of one release's build output.

    .venv/bin/python bench/corpus.py          # fetch and unpack every pair, print sizes
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
PIP_PLATFORM = ["--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp"]


@dataclass(frozen=True)
class Pair:
    """Two consecutive releases of one package and what kind of change they represent."""

    name: str
    source: str  # "pypi" or "npm"
    old: str
    new: str
    kind: str
    key: str = ""  # what --pairs selects; the package name unless two pairs share a package
    sha256: tuple[tuple[str, str], ...] = ()  # (version, sha256 of its package file): checked after download

    @property
    def label(self) -> str:
        return f"{self.name} {self.old}->{self.new}"

    @property
    def id(self) -> str:
        """The name ``--pairs`` selects this pair by."""
        return self.key or self.name


# Smallest first: --quick takes the first two.
PAIRS: tuple[Pair, ...] = (
    Pair("requests", "pypi", "2.32.2", "2.32.3", "pure Python"),
    Pair("typescript", "npm", "5.5.4", "5.6.2", "minor jump, large JS bundles"),
    Pair("ruff", "pypi", "0.6.8", "0.6.9", "large native executable"),
    Pair("numpy", "pypi", "2.0.2", "2.1.0", "minor jump, .so + Python"),
    Pair("scipy", "pypi", "1.14.0", "1.14.1", ".so-heavy, >100 MB unpacked"),
    # Issue 23: the two kinds of update the first corpus missed (after the original five, so --quick keeps its
    # pairs): a patch release of a large JS bundle, and a pure-Python patch release with a few changed lines.
    Pair("typescript", "npm", "5.6.2", "5.6.3", "patch release, large JS bundles", key="typescript-patch",
         sha256=(("5.6.2", "6e954963e7689a13573927021cf1fe2d7f85d7808eba49f03f84cb5d77cdd6bf"),
                 ("5.6.3", "ef67f8d8ad895858024b7339d3e34bf112cae3c5db1f538c3079038b17ae30fa"))),
    Pair("idna", "pypi", "3.9", "3.10", "pure Python, small diff",
         sha256=(("3.9", "69297d5da0cc9281c77efffb4e730254dd45943f45bbfb461de5991713989b1e"),
                 ("3.10", "946d195a0d259cbba61165e88e65941f16e9b36ea6ddb97f00452bae8b1287d3"))),
)


def _download(pair: Pair, version: str, dest: Path) -> Path:
    """The package file of ``version`` in ``dest`` (downloaded unless already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    found = _package_file(pair, version, dest)
    if found:
        _verify(pair, version, found)
        return found
    if pair.source == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               *PIP_PLATFORM, f"{pair.name}=={version}", "-d", str(dest)]
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm not found: install Node.js/npm (e.g. apt-get install -y npm) for the npm pairs")
        cmd = [npm, "pack", "--silent", f"{pair.name}@{version}", "--pack-destination", str(dest)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    found = _package_file(pair, version, dest)
    if not found:
        raise SystemExit(f"download of {pair.name} {version} left no package file in {dest}")
    _verify(pair, version, found)
    return found


def _verify(pair: Pair, version: str, archive: Path) -> None:
    """The package file has the sha256 the pair records (when it records one): a registry that served other bytes
    under the same version would silently change every figure measured on it. A mismatch removes the file."""
    want = dict(pair.sha256).get(version)
    if want is None:
        return
    with open(archive, "rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != want:
        archive.unlink()
        raise SystemExit(f"{archive.name}: sha256 {got}, expected {want} (file removed; not measured)")


def _package_file(pair: Pair, version: str, dest: Path) -> Path | None:
    pattern = f"{pair.name}-{version}-*.whl" if pair.source == "pypi" else f"{pair.name}-{version}.tgz"
    return next(iter(sorted(dest.glob(pattern))), None)


def _unpack_wheel(archive: Path, out: Path) -> None:
    """Extract a wheel, keeping the executable bit recorded in the zip (as pip does)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = out / info.filename
            if not target.resolve().is_relative_to(out.resolve()):
                raise SystemExit(f"{archive}: unsafe member {info.filename!r}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            executable = (info.external_attr >> 16) & stat.S_IXUSR
            os.chmod(target, 0o755 if executable else 0o644)


def _unpack_tgz(archive: Path, out: Path) -> None:
    with tarfile.open(archive, "r:gz") as tf:
        tf.extractall(out, filter="data")
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)


def release_dir(pair: Pair, version: str) -> Path:
    """The unpacked tree of ``version`` of ``pair``'s package, fetched and unpacked if needed."""
    base = CACHE / "corpus" / pair.name
    out = base / version
    done = base / f".{version}.done"
    if done.exists():
        return out
    archive = _download(pair, version, base / "dl")
    if out.exists():
        shutil.rmtree(out)
    partial = base / f".{version}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    if archive.suffix == ".whl":
        _unpack_wheel(archive, partial)
    else:
        _unpack_tgz(archive, partial)
    partial.rename(out)
    done.touch()
    return out


def tree_size(root: Path) -> int:
    """Bytes in the regular files below ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    """Fetch every pair and print its unpacked sizes."""
    for pair in PAIRS:
        old, new = release_dir(pair, pair.old), release_dir(pair, pair.new)
        print(f"{pair.label:<28} {tree_size(old) / 2**20:8.1f} MiB -> {tree_size(new) / 2**20:8.1f} MiB  ({pair.kind})")


if __name__ == "__main__":
    main()
