"""bus.shm: capture's Ring and the readers' Rings over real files in a tmp directory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import bus.shm
from bus.codec import ShmRef
from bus.shm import MAGIC, Ring, Rings, ShmError, sweep


@pytest.fixture
def rings() -> Iterator[list[Ring]]:
    """Rings made by a test (``make``), closed at the end whatever happened."""
    made: list[Ring] = []
    yield made
    for r in made:
        if hasattr(r, "_map"):
            r.close()


def make(made: list[Ring], tmp_path: Path, slots: int = 2, slot_bytes: int = 4 * 5 * 3) -> Ring:
    ring = Ring(slots, slot_bytes, directory=tmp_path)
    made.append(ring)
    return ring


def img(value: int, shape: tuple[int, ...] = (4, 5, 3)) -> np.ndarray:
    return np.random.default_rng(value).integers(0, 256, shape, dtype=np.uint8)


def dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_put_view_release_round_trip(tmp_path: Path, rings: list[Ring]) -> None:
    ring, reader = make(rings, tmp_path), Rings(directory=tmp_path)
    a = img(1)
    ref = ring.put(a)
    assert ref is not None and ref.ring == ring.name and ref.shape == (4, 5, 3) and ref.gen == 1
    assert np.array_equal(reader.view(ref), a) and reader.valid(ref)
    assert ring.busy() == 1
    assert reader.release(ref) and ring.busy() == 0


def test_only_the_owner_can_read_a_ring(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path)
    assert ring.path.stat().st_mode & 0o777 == 0o600  # frames of faces: not for other local users


def test_a_grey_2d_image_gets_one_channel(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path)
    a = img(2, (4, 5))
    ref = ring.put(a)
    assert ref is not None and ref.shape == (4, 5, 1)
    assert np.array_equal(Rings(directory=tmp_path).view(ref)[:, :, 0], a)


def test_a_full_ring_returns_none_and_a_release_frees_a_slot(tmp_path: Path, rings: list[Ring]) -> None:
    ring, reader = make(rings, tmp_path), Rings(directory=tmp_path)
    first, second = ring.put(img(1)), ring.put(img(2))
    assert first is not None and second is not None and first.slot != second.slot
    t0 = time.monotonic()
    assert ring.put(img(3), wait_s=0) is None
    assert time.monotonic() - t0 < 0.1
    t0 = time.monotonic()
    assert ring.put(img(3), wait_s=0.2) is None
    assert 0.19 <= time.monotonic() - t0 < 1.5
    assert reader.release(first)
    third = ring.put(img(3), wait_s=0)
    assert third is not None and third.slot == first.slot and third.gen == first.gen + 1
    assert np.array_equal(reader.view(second), img(2)), "the other slot is untouched"


def test_a_reused_slot_invalidates_the_old_reference(tmp_path: Path, rings: list[Ring]) -> None:
    ring, reader = make(rings, tmp_path, slots=1), Rings(directory=tmp_path)
    old = ring.put(img(1))
    assert old is not None and reader.release(old)
    new = ring.put(img(2))
    assert new is not None and (new.slot, new.gen) == (old.slot, old.gen + 1)
    with pytest.raises(ShmError, match="overwritten"):
        reader.view(old)
    assert not reader.valid(old)
    assert not reader.release(old)
    assert ring.busy() == 1, "a stale reference must not free the new frame's slot"
    assert np.array_equal(reader.view(new), img(2)) and reader.valid(new)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((5, 5, 3), np.uint8),  # 75 bytes > 60
        np.zeros((4, 5, 3), np.float32),
        np.zeros((4, 10, 3), np.uint8)[:, ::2],  # not contiguous
    ],
    ids=["too-big", "float32", "strided"],
)
def test_images_that_do_not_fit_return_none(tmp_path: Path, rings: list[Ring], image: np.ndarray) -> None:
    ring = make(rings, tmp_path)
    assert ring.put(image) is None and ring.busy() == 0


@pytest.mark.parametrize(("slots", "slot_bytes"), [(0, 10), (bus.shm.MAX_SLOTS + 1, 10), (2, 0)])
def test_ring_rejects_bad_sizes(tmp_path: Path, slots: int, slot_bytes: int) -> None:
    with pytest.raises(ValueError):
        Ring(slots, slot_bytes, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_slot_busy_past_reclaim_s_is_taken_back(
    tmp_path: Path, rings: list[Ring], monkeypatch: pytest.MonkeyPatch
) -> None:
    ring, reader = make(rings, tmp_path), Rings(directory=tmp_path)
    first, second = ring.put(img(1)), ring.put(img(2))
    assert first is not None and second is not None
    assert ring.put(img(3)) is None and ring.reclaimed == 0, "the default RECLAIM_S is far away"
    monkeypatch.setattr(bus.shm, "RECLAIM_S", 0.01)
    time.sleep(0.05)
    third = ring.put(img(3))
    assert third is not None and third.slot == first.slot, "the oldest busy slot is taken back"
    assert ring.reclaimed == 1
    assert not reader.valid(first) and reader.valid(second)
    with pytest.raises(ShmError):
        reader.view(first)


@pytest.mark.parametrize("name", ["foo", "emostream-1-1-XYZWXYZW", "../emostream-1-1-deadbeef", "emostream-1-1"])
def test_rings_rejects_names_that_are_not_ring_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ShmError, match="not a ring name"):
        Rings(directory=tmp_path).view(ShmRef(name, 0, 1, (1, 1, 3)))


def test_a_missing_ring_names_the_shm_slots_setting(tmp_path: Path) -> None:
    ref = ShmRef("emostream-1-1-deadbeef", 0, 1, (1, 1, 3))
    reader = Rings(directory=tmp_path)
    with pytest.raises(ShmError, match="shm_slots = 0"):
        reader.view(ref)
    assert not reader.valid(ref) and not reader.release(ref)


def test_a_file_with_a_bad_magic_is_refused(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path)
    forged = tmp_path / "emostream-1-1-deadbeef"
    data = bytearray(ring.path.read_bytes())
    assert data[:8] == MAGIC
    data[:8] = b"NOTSHM01"
    forged.write_bytes(bytes(data))
    with pytest.raises(ShmError, match="bad header"):
        Rings(directory=tmp_path).view(ShmRef(forged.name, 0, 0, (1, 1, 3)))


def test_a_file_of_the_wrong_size_is_refused(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path)
    grown = tmp_path / "emostream-1-2-deadbeef"
    grown.write_bytes(ring.path.read_bytes() + b"\x00" * 64)
    with pytest.raises(ShmError, match="bad header"):
        Rings(directory=tmp_path).view(ShmRef(grown.name, 0, 0, (1, 1, 3)))


def test_a_truncated_file_is_reported_as_truncated(tmp_path: Path) -> None:
    (tmp_path / "emostream-1-3-deadbeef").write_bytes(b"\x00" * 10)
    with pytest.raises(ShmError, match="10 bytes"):
        Rings(directory=tmp_path).view(ShmRef("emostream-1-3-deadbeef", 0, 0, (1, 1, 3)))


@pytest.mark.parametrize(("slot", "shape"), [(2, (1, 1, 3)), (-1, (1, 1, 3)), (0, (5, 5, 3))])
def test_references_out_of_range_are_refused(
    tmp_path: Path, rings: list[Ring], slot: int, shape: tuple[int, int, int]
) -> None:
    ring, reader = make(rings, tmp_path), Rings(directory=tmp_path)
    ref = ring.put(img(1))
    assert ref is not None
    bad = ShmRef(ring.name, slot, ref.gen, shape)
    with pytest.raises(ShmError, match="out of range"):
        reader.view(bad)
    if slot != ref.slot:
        assert not reader.valid(bad) and not reader.release(bad)
    assert ring.busy() == 1


def test_rings_keeps_at_most_max_open_mapped_least_recently_used_first_out(tmp_path: Path, rings: list[Ring]) -> None:
    made = [make(rings, tmp_path) for _ in range(3)]
    refs = [r.put(img(i)) for i, r in enumerate(made)]
    assert all(ref is not None for ref in refs)
    reader = Rings(directory=tmp_path, max_open=2)
    reader.view(refs[0])
    reader.view(refs[1])
    reader.view(refs[0])  # now refs[1]'s ring is the least recently used
    reader.view(refs[2])  # ... and is closed
    for r in made:
        r.close()  # the names go; mapped rings stay readable
    assert np.array_equal(reader.view(refs[0]), img(0))
    assert np.array_equal(reader.view(refs[2]), img(2))
    with pytest.raises(ShmError, match="not on this host"):
        reader.view(refs[1])


def test_sweep_removes_rings_of_dead_processes_only(tmp_path: Path) -> None:
    dead = tmp_path / f"emostream-{dead_pid()}-1-deadbeef"
    mine = tmp_path / f"emostream-{os.getpid()}-1-deadbeef"
    parent = tmp_path / f"emostream-{os.getppid()}-1-deadbeef"
    other = tmp_path / "emostream-notaring"
    for p in (dead, mine, parent, other):
        p.write_bytes(b"x")
    assert sweep(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, parent, other))
    assert sweep(tmp_path) == 0


def test_close_unlinks_the_file_but_readers_keep_their_view(tmp_path: Path) -> None:
    ring, reader = Ring(2, 60, directory=tmp_path), Rings(directory=tmp_path)
    ref = ring.put(img(1))
    assert ref is not None and ring.path.exists()
    reader.view(ref)
    ring.close()
    assert not ring.path.exists() and list(tmp_path.iterdir()) == []
    assert np.array_equal(reader.view(ref), img(1))
    with pytest.raises(ShmError):
        Rings(directory=tmp_path).view(ref)
