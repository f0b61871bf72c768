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
from bus.shm import HOST, MAGIC, Ring, Rings, ShmError, sweep


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


@pytest.mark.parametrize(
    "name",
    ["foo", "emostream-1-1-XYZWXYZW", "../emostream-1-1-deadbeef", "emostream-1-1", "emostream-1-1-deadbeef"],
)
def test_rings_rejects_names_that_are_not_ring_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ShmError, match="not a ring name"):
        Rings(directory=tmp_path).view(ShmRef(name, 0, 1, (1, 1, 3)))


def test_a_ring_of_another_host_names_the_shm_slots_setting(tmp_path: Path) -> None:
    other = "0" * 8 if HOST != "0" * 8 else "1" * 8
    ref = ShmRef(f"emostream-1-1-{other}-deadbeef", 0, 1, (1, 1, 3))
    reader = Rings(directory=tmp_path)
    with pytest.raises(ShmError, match="is on another host; stages on other hosts need \\[bus\\] shm_slots = 0"):
        reader.view(ref)
    assert not reader.valid(ref) and not reader.release(ref)


def test_a_closed_ring_of_this_host_is_gone_not_on_another_host(tmp_path: Path) -> None:
    """Issue 11 case 17: a ring capture closed (its run ended) was reported 'not on this host'."""
    ring = Ring(2, 60, directory=tmp_path)
    ref = ring.put(img(1))
    assert ref is not None
    ring.close()
    with pytest.raises(ShmError) as e:
        Rings(directory=tmp_path).view(ref)
    assert (
        str(e.value) == f"ring {ring.name} is gone: its capture (pid {os.getpid()}) closed it (it ended or restarted)"
    )


def test_a_file_with_a_bad_magic_is_refused(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path)
    forged = tmp_path / f"emostream-1-1-{HOST}-deadbeef"
    forged.touch(mode=0o600)
    data = bytearray(ring.path.read_bytes())
    assert data[:8] == MAGIC
    data[:8] = b"NOTSHM01"
    forged.write_bytes(bytes(data))
    with pytest.raises(ShmError, match="bad header"):
        Rings(directory=tmp_path).view(ShmRef(forged.name, 0, 0, (1, 1, 3)))


def test_a_file_of_the_wrong_size_is_refused(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path)
    grown = tmp_path / f"emostream-1-2-{HOST}-deadbeef"
    grown.touch(mode=0o600)
    grown.write_bytes(ring.path.read_bytes() + b"\x00" * 64)
    with pytest.raises(ShmError, match="bad header"):
        Rings(directory=tmp_path).view(ShmRef(grown.name, 0, 0, (1, 1, 3)))


def test_a_truncated_file_is_reported_as_truncated(tmp_path: Path) -> None:
    name = f"emostream-1-3-{HOST}-deadbeef"
    (tmp_path / name).touch(mode=0o600)
    (tmp_path / name).write_bytes(b"\x00" * 10)
    with pytest.raises(ShmError, match="10 bytes"):
        Rings(directory=tmp_path).view(ShmRef(name, 0, 0, (1, 1, 3)))


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
    with pytest.raises(ShmError, match="is gone"):
        reader.view(refs[1])


def test_sweep_removes_rings_of_dead_processes_only(tmp_path: Path) -> None:
    dead = tmp_path / f"emostream-{dead_pid()}-1-{HOST}-deadbeef"
    dead_old_name = tmp_path / f"emostream-{dead_pid()}-1-deadbeef"  # made before the host tag
    dead_elsewhere = tmp_path / f"emostream-{dead_pid()}-1-{'0' * 8 if HOST != '0' * 8 else '1' * 8}-deadbeef"
    mine = tmp_path / f"emostream-{os.getpid()}-1-{HOST}-deadbeef"
    parent = tmp_path / f"emostream-{os.getppid()}-1-{HOST}-deadbeef"
    other = tmp_path / "emostream-notaring"
    for p in (dead, dead_old_name, dead_elsewhere, mine, parent, other):
        p.write_bytes(b"x")
    assert sweep(tmp_path) == 2
    kept = (dead_elsewhere, mine, parent, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
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


# Issue 11 case 8: a reader trusts nothing in a ring's name.


def plant(tmp_path: Path, ring: Ring, suffix: str = "cafebabe") -> Path:
    """A copy of ``ring``'s file under another valid ring name (the header and size are right)."""
    path = tmp_path / f"emostream-1-9-{HOST}-{suffix}"
    path.touch(mode=0o600)
    path.write_bytes(ring.path.read_bytes())
    return path


def test_a_symlink_is_not_followed(tmp_path: Path, rings: list[Ring]) -> None:
    target = tmp_path / "passwd"
    target.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    link = tmp_path / f"emostream-1-9-{HOST}-cafebabe"
    link.symlink_to(target)
    with pytest.raises(ShmError, match="cannot open"):
        Rings(directory=tmp_path).view(ShmRef(link.name, 0, 0, (1, 1, 3)))
    # even to a real ring: a link is never a ring
    ring = make(rings, tmp_path)
    link.unlink()
    link.symlink_to(ring.path)
    with pytest.raises(ShmError, match="cannot open"):
        Rings(directory=tmp_path).view(ShmRef(link.name, 0, 0, (1, 1, 3)))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o666, 0o400])
def test_a_ring_file_must_have_mode_0600(tmp_path: Path, rings: list[Ring], mode: int) -> None:
    path = plant(tmp_path, make(rings, tmp_path))
    path.chmod(mode)
    with pytest.raises(ShmError, match=f"not a ring of ours .*mode {mode:o}"):
        Rings(directory=tmp_path).view(ShmRef(path.name, 0, 0, (1, 1, 3)))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_ring_file_of_another_user_is_refused(tmp_path: Path, rings: list[Ring]) -> None:
    path = plant(tmp_path, make(rings, tmp_path))
    os.chown(path, 65534, 65534)  # nobody
    with pytest.raises(ShmError, match=r"not a ring of ours .*found uid 65534"):
        Rings(directory=tmp_path).view(ShmRef(path.name, 0, 0, (1, 1, 3)))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_huge_file_is_refused_before_it_is_mapped(tmp_path: Path) -> None:
    """A 1 GiB sparse file with a valid header for its size grew the reader by 1.05 GB."""
    slots, slot_bytes = 16, 64 << 20
    size = bus.shm._layout(slots, slot_bytes)[2]
    path = tmp_path / f"emostream-1-9-{HOST}-cafebabe"
    with path.open("wb") as f:
        path.chmod(0o600)
        f.write(MAGIC + np.array([slots, slot_bytes], np.uint64).tobytes())
        f.truncate(size)  # sparse
    before = rss_kib()
    with pytest.raises(ShmError, match=f"{size} bytes, over \\[bus\\] shm_max_bytes = {64 << 20}"):
        Rings(directory=tmp_path, max_bytes=64 << 20).view(ShmRef(path.name, 0, 1, (1, 1, 3)))
    assert rss_kib() - before < 10_000


def test_pixels_are_mapped_read_only(tmp_path: Path, rings: list[Ring]) -> None:
    ring, reader = make(rings, tmp_path), Rings(directory=tmp_path)
    ref = ring.put(img(1))
    assert ref is not None
    view = reader.view(ref)
    assert not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0, 0] = 1
    assert reader.release(ref) and ring.busy() == 0, "the slot table stays writable for releases"


# Issue 11 case 4: a slot is released by the sender that could not send its frame.


def test_the_writer_releases_a_slot_whose_frame_was_not_sent(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path)
    first, second = ring.put(img(1)), ring.put(img(2))
    assert first is not None and second is not None and ring.put(img(3)) is None
    assert ring.release(first) and ring.busy() == 1
    assert not ring.release(first), "a second release of the same frame is refused"
    third = ring.put(img(3))
    assert third is not None and third.slot == first.slot
    assert not ring.release(ShmRef("emostream-1-1-00000000-deadbeef", second.slot, second.gen, (4, 5, 3)))
    assert ring.busy() == 2


def test_a_live_ring_takes_back_slots_after_its_own_reclaim_time(tmp_path: Path, rings: list[Ring]) -> None:
    ring = Ring(2, 60, directory=tmp_path, reclaim_s=0.05)  # a live source: [bus] max_age_ms
    rings.append(ring)
    assert ring.put(img(1)) is not None and ring.put(img(2)) is not None
    assert ring.put(img(3)) is None
    time.sleep(0.08)
    assert ring.put(img(3)) is not None and ring.reclaimed == 1


# Issue 11 case 5: the ring is capped and sized to the space there is.


def test_create_caps_the_ring_at_max_bytes(tmp_path: Path) -> None:
    frame = 1920 * 1080 * 3
    ring = bus.shm.create(16, frame, max_bytes=32 << 20, directory=tmp_path)
    try:
        assert ring.slots == 5 and ring.path.stat().st_size <= 32 << 20
        assert ring.note is not None and "5 slots instead of [bus] shm_slots = 16" in ring.note
        assert "shm_max_bytes = 33554432" in ring.note
    finally:
        ring.close()
    with pytest.raises(bus.shm.ShmSpaceError, match=r"no room for 2 frames of 5\.9 MiB within \[bus\] shm_max_bytes"):
        bus.shm.create(16, frame, max_bytes=10 << 20, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


class FakeStatvfs:
    def __init__(self, total: int, free: int):
        self.f_frsize, self.f_blocks, self.f_bavail = 4096, total // 4096, free // 4096


def test_create_uses_at_most_half_the_free_space_and_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = 1920 * 1080 * 3
    monkeypatch.setattr(bus.shm.os, "statvfs", lambda _d: FakeStatvfs(64 << 20, 60 << 20))
    ring = bus.shm.create(16, frame, directory=tmp_path)
    try:
        assert ring.slots == 5
        assert ring.note is not None and f"half the free space of {tmp_path} (64.0 MiB, 60.0 MiB free)" in ring.note
    finally:
        ring.close()
    monkeypatch.setattr(bus.shm.os, "statvfs", lambda _d: FakeStatvfs(64 << 20, 20 << 20))
    with pytest.raises(
        bus.shm.ShmSpaceError,
        match=f"{tmp_path} \\(64.0 MiB, 20.0 MiB free\\): no room for 2 frames of 5.9 MiB in half its free space",
    ):
        bus.shm.create(16, frame, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_over_committed_directory_fails_at_creation_not_at_the_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """posix_fallocate: a tmpfs that cannot hold the ring says ENOSPC when it is made (without it,
    the first frame written past the free pages killed capture with SIGBUS)."""

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bus.shm.os, "posix_fallocate", full)
    with pytest.raises(bus.shm.ShmSpaceError, match=r"cannot allocate a ring of .*No space left on device"):
        bus.shm.create(4, 1000, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_ring_file_is_allocated_at_creation(tmp_path: Path, rings: list[Ring]) -> None:
    ring = make(rings, tmp_path, slots=4, slot_bytes=1 << 20)
    st = ring.path.stat()
    assert st.st_blocks * 512 >= st.st_size, "not sparse: every page is reserved now"


def test_the_readers_default_cap_is_the_configs() -> None:
    from bus.config import BusConfig

    assert BusConfig().shm_max_bytes == bus.shm.DEFAULT_MAX_BYTES
