"""Delta kinds are named once (formats.delta_kinds) and every side registers each exactly once."""

from __future__ import annotations

import hashlib
import io

import pytest

from pinnacle_updates.formats import delta_format, delta_kinds, lzma_dict
from pinnacle_updates.formats.delta_apply import kinds as client_kinds
from pinnacle_updates.formats.delta_format import DeltaHeader, DeltaOp, ManifestPatch, read_header, write_delta
from pinnacle_updates.formats.delta_kinds import ALL_KINDS, ContainerKind, OpKind
from pinnacle_updates.formats.delta_segments import WHOLE_PATCH_MAX
from pinnacle_updates.formats.index import Digest, EntryType, Manifest, ManifestEntry
from pinnacle_updates.repo_tools import delta as publisher
from pinnacle_updates.repo_tools.core import delta_plan

SHA = "a" * 64
MIB = 1 << 20


def test_every_kind_is_named_once_and_the_enums_do_not_overlap() -> None:
    assert len(ALL_KINDS) == len(set(ALL_KINDS)) == len(OpKind) + len(ContainerKind)
    assert not {k.value for k in OpKind} & {k.value for k in ContainerKind}
    assert delta_format.OpKind is OpKind  # the container module re-exports the one enum


@pytest.mark.parametrize("registry", [publisher.PUBLISHER_KINDS, client_kinds.CLIENT_KINDS],
                         ids=["publisher", "client"])
def test_each_registry_covers_every_kind_exactly(registry: dict[delta_kinds.DeltaKind, object]) -> None:
    assert sorted(map(str, registry)) == sorted(map(str, ALL_KINDS))
    assert len(registry) == len(ALL_KINDS)


def test_the_registries_split_ops_and_containers_by_type() -> None:
    assert set(publisher.OP_ENCODERS) == set(client_kinds.OP_APPLIERS) == set(OpKind)
    assert set(publisher.CONTAINER_ENCODERS) == set(client_kinds.CONTAINER_APPLIERS) == set(ContainerKind)
    assert set(delta_plan.ENCODER_MEMORY) == set(OpKind)


def test_the_planner_only_proposes_kinds_the_publisher_can_encode() -> None:
    written = {kind for kind, encoder in publisher.OP_ENCODERS.items() if encoder.encode is not None}
    assert written == {OpKind.ZSTD, OpKind.ZSTD_PATCH, OpKind.BSDIFF_LZMA, OpKind.BSDIFF4, OpKind.ZSTD_SEGMENTS,
                       OpKind.BSDIFF_SEGMENTS}
    for kind, encoder in publisher.OP_ENCODERS.items():
        assert (encoder.encode is None) == bool(encoder.note), kind  # a kind without an encoder says why


@pytest.mark.parametrize("kind", list(OpKind))
def test_client_op_memory_is_bounded_whatever_the_file_sizes(kind: OpKind) -> None:
    """Whole-file patches are refused above WHOLE_PATCH_MAX, so their bound there is the worst case;
    the other ops' bounds do not grow with the file sizes."""
    bound = client_kinds.OP_APPLIERS[kind].decode_memory
    if kind.whole_file:
        assert 0 < bound(WHOLE_PATCH_MAX, WHOLE_PATCH_MAX) < 2048 * MIB
    else:
        assert 0 < bound(1 << 40, 1 << 40) == bound(4 * WHOLE_PATCH_MAX, 4 * WHOLE_PATCH_MAX) < 512 * MIB


def _manifest(version: str, sizes: dict[str, int]) -> Manifest:
    entries = tuple(ManifestEntry(p, EntryType.FILE, 0o644, n, hashlib.sha256(f"{version}/{p}".encode()).hexdigest())
                    for p, n in sizes.items())  # every file changed: the per-file kind has something to encode
    return Manifest(version, Digest(sum(sizes.values()) + 10240, SHA), entries)


def test_container_memory_estimates_are_positive_on_both_sides() -> None:
    base = _manifest("1.0.0", {"lib/a.so": 3 * MIB, "b.txt": 10_000})
    target = _manifest("1.1.0", {"lib/a.so": 3 * MIB + 5, "c.txt": 20_000})
    for kind in ContainerKind:
        assert client_kinds.CONTAINER_APPLIERS[kind].decode_memory(base, target) > 0
        if kind is not ContainerKind.SOLID or lzma_dict.available():
            assert publisher.CONTAINER_ENCODERS[kind].memory(base, target) > 0


def _header(**fields: object) -> DeltaHeader:
    ops = fields.pop("ops", ())
    return DeltaHeader("1.0.0", "1.1.0", Digest(1, SHA), Digest(2, SHA), ops, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "kind"), [
    ({"ops": (DeltaOp("a", OpKind.ZSTD, None, 4, 3),), "manifest": ManifestPatch(4, 19)}, ContainerKind.PER_FILE),
    ({"ops": (DeltaOp("a", OpKind.BSDIFF_SHARED, "a", 4, 3),), "manifest": ManifestPatch(4, 19), "shared": (1, 1, 1)},
     ContainerKind.SHARED),
    ({"manifest": ManifestPatch(None, 19), "archive": 5}, ContainerKind.WHOLE_ARCHIVE),
    ({"manifest": ManifestPatch(4, 19), "solid": 5}, ContainerKind.SOLID),
])
def test_a_header_is_classified_by_the_field_that_marks_its_kind(fields: dict[str, object],
                                                                 kind: ContainerKind) -> None:
    """The kind survives the wire unchanged, and its value is the header field that marks it."""
    header = _header(**fields)
    assert header.kind is kind
    assert kind.value in header.to_dict()
    out = io.BytesIO()
    write_delta(out, header, [b"\0" * header.payload_length])
    assert read_header(io.BytesIO(out.getvalue())).kind is kind
