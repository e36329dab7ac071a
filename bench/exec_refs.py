"""What an executable-aware step could save on native code: a bound and one middle way, measured.

bsdiff codes moved machine code as a *diff* block whose non-zero bytes are mostly reference fields (relative
calls and jumps, RIP-relative operands, symbol values, relocations, unwind tables) whose targets moved by a
different amount than the field. For the largest changed ELF x86-64 files of the native pairs this prints the
``bsdiff-lzma`` patch (``formats.bsdiff_lzma``, what the publisher sends today) of:

* the files as they are;
* both files with every reference field set to zero (the **bound**: what is left when every reference is
  known, as a Zucchini-class differ would try to arrange; the new values themselves are not counted);
* the **middle way**: the zeroed files, plus the residuals (new value minus prediction) of every new field,
  predicted from the old field that the zeroed files' alignment pairs it with, its target mapped through the
  same alignment; the residuals coded as one raw LZMA2 stream.

Fields are found from the bytes around them only, never from their values (so a client could find them again
in a zeroed file it rebuilt): rel32 operands after the opcodes below in ``.text``, symbol names and values,
``.rela.dyn`` offsets and addends, every word of ``.data.rel.ro``/``.got``/``.init_array``/``.fini_array``,
the ``.eh_frame_hdr`` table and each FDE's pc. The finder's time is printed: a client would run it on both
files. Nothing here is used by the product; docs/DELTA-BENCHMARK.md ("Executable-aware steps") discusses it.

    .venv/bin/python bench/exec_refs.py [--pairs ruff,numpy,scipy] [--files 3]
"""

from __future__ import annotations

import argparse
import bisect
import lzma
import re
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bsdiff4.core

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from corpus import PAIRS, Pair, release_dir

from pinnacle_updates.formats import bsdiff_lzma

# Opcodes (with an optional REX or SSE prefix) followed by a 32-bit pc-relative operand: call/jmp/jcc rel32,
# call/jmp [rip+d32], and common instructions whose ModRM byte selects [rip+d32] (mod 00, r/m 101).
RIP_MODRM = rb"[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]"
REL32 = re.compile(
    rb"(?:\xe8|\xe9|\x0f[\x80-\x8f]|\xff[\x15\x25]"
    rb"|[\x40-\x4f]?[\x8b\x8d\x89\x3b\x39\x03\x2b\x85\x33\x0b\x23\x63\x80\x81\x83\xf6\xf7\xff\xc6\xc7]" + RIP_MODRM
    + rb"|[\x66\xf2\xf3]?[\x40-\x4f]?\x0f[\x10\x11\x28\x29\x2e\x2f\x54\x57\x58\x59\x5c\x5e\x6f\x7f\xb6\xb7\xbe"
    rb"\xbf\x18\x1f\xd6\x6e\x7e\x12\x16\x5d\x5f\x51\x2a\x2c\x2d\xc2\xdb\xeb\xef\xfe\xd4\xfa\xfb]" + RIP_MODRM
    + rb")(....)",
    re.S,
)
MIB = 1 << 20


@dataclass(frozen=True)
class Field:
    """A reference field: ``offset`` in the file, ``width`` bytes, ``kind``: ``rel`` (pc-relative, from the
    field's end), ``pc`` (pc-relative, from its start), ``hdr`` (from ``.eh_frame_hdr``), ``name`` (into
    ``.strtab``) or ``abs`` (a virtual address)."""

    offset: int
    width: int
    kind: str


class Elf:
    """The parts of an ELF64 little-endian file the finder and the address map need."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not an ELF64 little-endian file")
        phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
        self.loads: list[tuple[int, int, int, int]] = []  # vaddr, offset, filesz, memsz
        for i in range(phnum):
            kind, _, off, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
            if kind == 1:
                self.loads.append((vaddr, off, filesz, memsz))
        headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names = headers[shstrndx][4]
        self.sections: dict[str, tuple[int, int, int]] = {}  # name: (vaddr, offset, size)
        for h in headers:
            name = data[names + h[0] : data.index(b"\0", names + h[0])].decode()
            if h[1] != 8:  # not NOBITS
                self.sections[name] = (h[3], h[4], h[5])
        self.low = min(v for v, _, _, _ in self.loads)
        self.high = max(v + m for v, _, _, m in self.loads)

    def offset_of(self, vaddr: int) -> int | None:
        return next((o + vaddr - v for v, o, f, _ in self.loads if v <= vaddr < v + f), None)

    def vaddr_of(self, offset: int) -> int | None:
        return next((v + offset - o for v, o, f, _ in self.loads if o <= offset < o + f), None)


def find_fields(data: bytes, elf: Elf) -> list[Field]:
    """Every reference field of ``data``, in offset order, found without reading any field's value."""
    fields: list[Field] = []
    if ".text" in elf.sections:
        _, off, size = elf.sections[".text"]
        fields += [Field(m.start(1), 4, "rel") for m in REL32.finditer(data, off, off + size)]
    for name, layout in ((".symtab", ((0, 4, "name"), (8, 8, "abs"))), (".rela.dyn", ((0, 8, "abs"), (16, 8, "abs")))):
        if name in elf.sections:
            _, off, size = elf.sections[name]
            fields += [Field(o + at, w, k) for o in range(off, off + size - 23, 24) for at, w, k in layout]
    for name in (".data.rel.ro", ".got", ".init_array", ".fini_array"):
        if name in elf.sections:
            _, off, size = elf.sections[name]
            fields += [Field(o, 8, "abs") for o in range(off, off + size - 7, 8)]
    if ".eh_frame_hdr" in elf.sections:
        _, off, size = elf.sections[".eh_frame_hdr"]
        if size >= 12 and data[off + 3] == 0x3B:  # a table of (pc, fde) as datarel sdata4
            count = struct.unpack_from("<I", data, off + 8)[0]
            fields += [Field(off + 12 + 4 * k, 4, "hdr") for k in range(min(2 * count, (size - 12) // 4))]
    if ".eh_frame" in elf.sections:
        fields += _fde_pcs(data, *elf.sections[".eh_frame"][1:])
    fields.sort(key=lambda f: f.offset)
    return fields


def _fde_pcs(data: bytes, off: int, size: int) -> Iterator[Field]:
    """Each FDE's pc_begin (pcrel sdata4, as GCC and LLVM emit on x86-64), walking the records by length."""
    end = off + size
    while off + 8 <= end:
        length, cie = struct.unpack_from("<II", data, off)
        if length in (0, 0xFFFFFFFF):
            return
        if cie:
            yield Field(off + 8, 4, "pc")
        off += 4 + length


def zeroed(data: bytes, fields: list[Field]) -> bytes:
    out = bytearray(data)
    for f in fields:
        out[f.offset : f.offset + f.width] = bytes(f.width)
    return bytes(out)


class Alignment:
    """bsdiff's matches between two files (``new`` offset, ``old`` offset, length), from its control block."""

    def __init__(self, control: bytes, long_min: int = 64) -> None:
        def signed(b: bytes) -> int:
            v = int.from_bytes(b, "little")
            return -(v & ~(1 << 63)) if v >> 63 else v

        self.by_new: list[tuple[int, int, int]] = []
        new = old = 0
        for i in range(0, len(control), 24):
            x, y, z = (signed(control[i + k : i + k + 8]) for k in (0, 8, 16))
            if x:
                self.by_new.append((new, old, x))
            new, old = new + x + y, old + x + z
        self.new_starts = [s[0] for s in self.by_new]
        self.long = sorted((o, n, x) for n, o, x in self.by_new if x >= long_min)  # the address map
        self.long_starts = [s[0] for s in self.long]

    def old_of(self, new: int, width: int) -> int | None:
        """The old offset matched with ``new`` when the whole field lies in one match."""
        i = bisect.bisect_right(self.new_starts, new) - 1
        if i < 0:
            return None
        n, o, x = self.by_new[i]
        return o + new - n if new + width <= n + x else None

    def new_of(self, old: int) -> int:
        """Where ``old`` went: the shift of the nearest long match."""
        i = max(0, bisect.bisect_right(self.long_starts, old) - 1)
        o, n, x = self.long[i]
        if old >= o + x and i + 1 < len(self.long) and self.long[i + 1][0] - old < old - (o + x - 1):
            o, n, x = self.long[i + 1]
        return old + n - o


def residuals(
    old: bytes, new: bytes, old_fields: list[Field], new_fields: list[Field], align: Alignment
) -> tuple[bytes, int]:
    """The residual of every new field (new value minus its prediction, modulo its width) and how many were 0."""
    eo, en = Elf(old), Elf(new)
    at_old = {f.offset: f for f in old_fields}

    def map_vaddr(vaddr: int) -> int:
        off = eo.offset_of(vaddr)
        if off is None:  # .bss and the like: follow the end of its segment
            for k, (v, _, _, m) in enumerate(eo.loads):
                if v <= vaddr < v + m and k < len(en.loads):
                    return vaddr - (v + m) + en.loads[k][0] + en.loads[k][3]
            return vaddr
        moved = en.vaddr_of(align.new_of(off))
        return moved if moved is not None else vaddr

    out, exact = bytearray(), 0
    for f in new_fields:
        prediction = 0
        q = align.old_of(f.offset, f.width)
        twin = at_old.get(q) if q is not None else None
        if q is not None and twin is not None and (twin.width, twin.kind) == (f.width, f.kind):
            value = int.from_bytes(old[q : q + f.width], "little", signed=f.width == 4 and f.kind != "name")
            prediction = _predict(f, value, q, eo, en, map_vaddr, align)
        actual = int.from_bytes(new[f.offset : f.offset + f.width], "little")
        residual = (actual - prediction) % (1 << (8 * f.width))
        exact += residual == 0
        out += residual.to_bytes(f.width, "little")
    return bytes(out), exact


def _predict(f: Field, value: int, q: int, eo: Elf, en: Elf, map_vaddr: Callable[[int], int], align: Alignment) -> int:
    """The new value of ``f`` predicted from its old twin's ``value`` at old offset ``q``."""
    if f.kind in ("rel", "pc"):
        here_old, here_new = eo.vaddr_of(q), en.vaddr_of(f.offset)
        if here_old is None or here_new is None:
            return value
        target = here_old + (4 if f.kind == "rel" else 0) + value
        return value + (map_vaddr(target) - target) - (here_new - here_old)
    if f.kind == "abs":
        return map_vaddr(value) if eo.low < value < eo.high else value
    if f.kind == "hdr" and ".eh_frame_hdr" in eo.sections and ".eh_frame_hdr" in en.sections:
        return map_vaddr(eo.sections[".eh_frame_hdr"][0] + value) - en.sections[".eh_frame_hdr"][0]
    if f.kind == "name" and value and ".strtab" in eo.sections and ".strtab" in en.sections:
        return align.new_of(eo.sections[".strtab"][1] + value) - en.sections[".strtab"][1]
    return value


def patch_size(old: bytes, new: bytes) -> tuple[int, bytes]:
    control, diff, extra = bsdiff4.core.diff(old, new)
    return len(bsdiff_lzma.pack(control, diff, extra, len(new))), control


def changed_elves(pair: Pair, count: int) -> list[tuple[str, Path, Path]]:
    """The ``count`` largest files of the new release that are ELF, changed, and present in the old one (at the
    same path, the version in it replaced: ``ruff-0.6.9.data/`` was ``ruff-0.6.8.data/``)."""
    old_root, new_root = release_dir(pair, pair.old), release_dir(pair, pair.new)
    found = []
    for path in new_root.rglob("*"):
        old = old_root / str(path.relative_to(new_root)).replace(pair.new, pair.old)
        if path.is_file() and not path.is_symlink() and old.is_file():
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            if path.read_bytes() != old.read_bytes():
                found.append((path.stat().st_size, str(path.relative_to(new_root)), old, path))
    return [(name, old, new) for _, name, old, new in sorted(found, reverse=True)[:count]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="ruff,numpy,scipy", help="comma-separated pair names (bench/corpus.py)")
    parser.add_argument("--files", type=int, default=3, help="largest changed ELF files per pair")
    args = parser.parse_args()
    wanted = args.pairs.split(",")
    print("| file | MiB | as is | references zeroed (bound) | middle way: zeroed + residuals | fields (predicted "
          "exactly) | finding the fields, both files |")
    print("|---|---|---|---|---|---|---|")
    for pair in (p for p in PAIRS if p.name in wanted):
        for name, old_path, new_path in changed_elves(pair, args.files):
            old, new = old_path.read_bytes(), new_path.read_bytes()
            started = time.perf_counter()
            old_fields, new_fields = find_fields(old, Elf(old)), find_fields(new, Elf(new))
            scan = time.perf_counter() - started
            as_is, _ = patch_size(old, new)
            old0, new0 = zeroed(old, old_fields), zeroed(new, new_fields)
            if find_fields(new0, Elf(new0)) != new_fields:
                raise SystemExit(f"{name}: the finder reads field values (it must not)")
            bound, control = patch_size(old0, new0)
            stream, exact = residuals(old, new, old_fields, new_fields, Alignment(control))
            coded = len(lzma.compress(stream, format=lzma.FORMAT_RAW, filters=[
                {"id": lzma.FILTER_LZMA2, "preset": bsdiff_lzma.PRESET}]))
            middle = bound + coded
            print(f"| {pair.name}: {Path(name).name} | {len(new) / MIB:.1f} | {as_is:,} | {bound:,} "
                  f"({bound / as_is:.2f}) | {middle:,} ({middle / as_is:.2f}) | {len(new_fields):,} ({exact:,}) "
                  f"| {scan:.2f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
