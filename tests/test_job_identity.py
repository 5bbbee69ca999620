"""A job's identity includes its data: a re-run skips a finished job only when the data it
trained on is the same bytes (issue 27, item 2)."""

from __future__ import annotations

import os

import pytest

from linreg_lab.data import content_digest
from linreg_lab.tracking.params import job_key

ROWS = "x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(50))


def config(path) -> dict:
    return {"dataset": {"_target_": "linreg_lab.tables.load_table", "path": str(path),
                        "target": "y"}, "optimizer": {"lr": 0.1}}  # fmt: skip


def test_the_job_key_follows_the_files_bytes_not_its_path_or_time(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = tmp_path / "t.csv"
    table.write_text(ROWS)
    first = job_key(config(table))
    assert job_key(config(table)) == first
    table.write_text(ROWS)  # rewritten, identical: a new mtime, the same bytes
    os.utime(table, ns=(1, 1))
    assert job_key(config(table)) == first
    table.write_text(ROWS.replace("\n1,3\n", "\n1,300\n"))  # one value changed, same size ±
    changed = job_key(config(table))
    assert changed != first
    table.write_text(ROWS.replace(",", ";").replace(";", ","))  # back to the first bytes
    assert job_key(config(table)) == first


def test_a_folder_of_files_is_digested_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.csv").write_text(ROWS)
    before = content_digest(folder)
    (folder / "b.csv").write_text(ROWS)
    assert content_digest(folder) != before
    assert content_digest(tmp_path / "missing.csv") is None


def test_the_digest_is_kept_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = tmp_path / "t.csv"
    table.write_text(ROWS)
    digest = content_digest(table)
    assert (tmp_path / "cache" / "linreg-lab" / "digests.json").exists()
    opened = []
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or pytest.fail("read"))
    assert content_digest(table) == digest and opened == []  # from the cache: not read again


@pytest.mark.slow
def test_a_rerun_sweep_trains_again_when_the_table_changed(store):
    table = store.root / "mut.csv"
    table.write_text(ROWS)
    args = ["-m", "dataset=table", f"dataset.path={table}", "dataset.target=y",
            "optimizer.lr=0.01,0.03", "trainer.epochs=2"]  # fmt: skip
    store.command(*args)
    table.write_text(ROWS.replace(",", ",").replace("\n", "\n"))  # identical bytes, rewritten
    same = store.command(*args)
    assert same.stdout.count("FINISHED before") == 2, same.stdout
    scaled = "x,y\n" + "".join(f"{i},{100 * (2 * i + 1)}\n" for i in range(50))
    table.write_text(scaled)  # the target x 100
    again = store.command(*args)
    assert "FINISHED before" not in again.stdout, again.stdout
    latest = max((r for r in store.runs() if r.data.tags.get("linreg.sweep") == "true"),
                 key=lambda r: r.info.start_time)  # fmt: skip
    children = [r for r in store.runs() if r.data.tags.get("mlflow.parentRunId")
                == latest.info.run_id]  # fmt: skip
    assert len(children) == 2 and all(r.data.metrics["optimum/loss"] >= 0 for r in children)
