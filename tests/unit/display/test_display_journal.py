"""The display's ledger journal: a restarted display of the same run goes on counting (issue 11)."""

from __future__ import annotations

from pathlib import Path

from display.journal import Journal
from display.worker import Ledger


def test_a_restarted_ledger_carries_the_earlier_counts_over(tmp_path: Path) -> None:
    j = Journal("run-1", "/tmp/events.jsonl", base=tmp_path)
    first = Ledger(["cam"], ["cam"], j.write)
    for seq in range(5):
        first.frame("cam", 0.0, seq, 0)
    first.drop("cam", "stale", 0.0, 5, 1)
    j.close(done=False)  # killed: the journal stays
    with (tmp_path / "ledger").iterdir().__next__().open("ab") as f:
        f.write(b'["f","cam",6')  # a torn last line from the kill
    j2 = Journal("run-1", "/tmp/events.jsonl", base=tmp_path)
    second = Ledger(["cam"], ["cam"], j2.write)
    assert second.replay(j2.replay(), 1.0) == 6
    second.frame("cam", 1.0, 5, 1)  # a duplicate of the dropped seq 5: seen before the restart
    second.frame("cam", 1.0, 6, 1)
    second.eos("cam", 8, 1, 1.0)
    second.finalise()
    c = second.sources["cam"]
    assert (c.received, dict(c.drops), c.duplicates, c.read) == (7, {"stale": 1}, 1, 8)
    j2.close(done=True)
    assert not list((tmp_path / "ledger").iterdir())
    # the run ended: a later display of the same run id and file starts from nothing
    j3 = Journal("run-1", "/tmp/events.jsonl", base=tmp_path)
    assert list(j3.replay()) == []


def test_another_run_or_events_file_starts_from_nothing(tmp_path: Path) -> None:
    j = Journal("run-1", "/tmp/a.jsonl", base=tmp_path)
    Ledger(["cam"], ["cam"], j.write).frame("cam", 0.0, 0, 0)
    assert list(Journal("run-2", "/tmp/a.jsonl", base=tmp_path).replay()) == []
    assert list(Journal("run-1", "/tmp/b.jsonl", base=tmp_path).replay()) == []
    assert len(list(Journal("run-1", "/tmp/a.jsonl", base=tmp_path).replay())) == 1
