"""Streamed Parquet tables (dataset.stream): read in passes, never whole; the same training as
in memory when the order is the same; every epoch visits every training row once."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from linreg_lab.data import DataError
from linreg_lab.engines import fit
from linreg_lab.engines.least_squares import least_squares
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.model import init_linear
from linreg_lab.streamed import TRAIN, VAL, StreamedTable, parts_of
from linreg_lab.tables import load_table

NO_SPLIT = {"val": 0.0, "test": 0.0, "seed": 0}


def _table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Features on very different scales, a target in its own units."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(50, 10, n), "b": rng.normal(0.002, 0.0005, n),
                          "c": rng.normal(3000, 400, n)})  # fmt: skip
    frame["price"] = 2 * frame.a + 8000 * frame.b + 0.01 * frame.c + 3 + rng.normal(0, 0.5, n)
    return frame


def _folder(tmp_path, frame: pd.DataFrame):
    """frame as pyarrow writes a dataset: several files, uneven row groups, a _SUCCESS."""
    folder = tmp_path / "events"
    folder.mkdir()
    cuts = np.linspace(0, len(frame), 4).astype(int)
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        pq.write_table(pa.Table.from_pandas(frame[lo:hi], preserve_index=False),
                       folder / f"part-{i}.parquet", row_group_size=[97, 250, 400][i])  # fmt: skip
    (folder / "_SUCCESS").write_text("")
    return folder


def _trained(data, **settings) -> tuple[torch.Tensor, list[float]]:
    torch.manual_seed(0)
    model = init_linear(torch.nn.Linear(data.num_features, 1))
    losses = []
    trainer = TrainerSettings(**{"epochs": 3, "batch_size": 10, "compiled": "true", **settings})
    fit(model, functools.partial(torch.optim.SGD, lr=0.03, momentum=0.5), data, trainer,
        lambda epoch, last, w, b, *rest: losses.append(last))  # fmt: skip
    return torch.cat([model.weight.detach().view(-1), model.bias.detach()]), losses


def test_streamed_training_equals_in_memory_in_the_same_order(tmp_path):
    """trainer.shuffle=false, no split: the same batches, so the same parameters (to float32
    rounding of the standardized values) and the same least-squares reference."""
    folder = _folder(tmp_path, _table())
    memory = load_table(str(folder), "price", split=NO_SPLIT, stream=False)
    streamed = load_table(str(folder), "price", split=NO_SPLIT, stream=True, shuffle_window=500)
    assert isinstance(streamed, StreamedTable) and not memory.streamed
    assert streamed.num_samples == memory.num_samples == 3000
    np.testing.assert_allclose(streamed.scaling.x_mean, memory.scaling.x_mean, rtol=1e-9)
    np.testing.assert_allclose(streamed.scaling.x_scale, memory.scaling.x_scale, rtol=1e-6)
    reference = least_squares(memory.X, memory.y)
    np.testing.assert_allclose(streamed.optimum.theta, reference.theta, rtol=1e-5)
    assert streamed.optimum.loss == pytest.approx(reference.loss, rel=1e-5)
    ours, ours_losses = _trained(streamed, shuffle=False)
    theirs, their_losses = _trained(memory, shuffle=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ours_losses == pytest.approx(their_losses, rel=1e-4)


def test_every_epoch_visits_every_training_row_once_in_a_seeded_order(tmp_path):
    frame = _table(2000)
    folder = _folder(tmp_path, frame)
    split = {"val": 0.2, "test": 0.1, "seed": 4}
    data = load_table(str(folder), "price", split=split, stream=True, shuffle_window=300)
    parts = parts_of(np.arange(len(frame)), data.fractions)
    train = frame[parts == TRAIN].to_numpy()
    assert data.num_samples == len(train) and data.held_out_rows == (
        int((parts == VAL).sum()),
        len(frame) - len(train) - int((parts == VAL).sum()),
    )

    def epoch(number: int, seed: int = 7) -> np.ndarray:
        seen = [rows[order].copy() for rows, order in data.windows(number, True, seed, 32)]
        assert all(len(rows) % 32 == 0 for rows in seen[:-1])  # whole batches but the last
        return np.concatenate(seen)

    first = epoch(1)
    center = np.r_[data.scaling.x_mean, data.scaling.y_mean]
    scale = np.r_[data.scaling.x_scale, data.scaling.y_scale]
    raw = first * scale + center  # back to the table's units
    assert np.allclose(np.sort(raw[:, -1]), np.sort(train[:, -1]), rtol=1e-5)  # each row once
    assert np.array_equal(first, epoch(1)) and not np.array_equal(first, epoch(2))
    assert not np.array_equal(first, epoch(1, seed=8))
    in_file_order = np.concatenate([r[o] for r, o in data.windows(1, False, 7, 32)]) * scale
    assert np.allclose(in_file_order + center, train, rtol=1e-5)  # shuffle=false: file order


def _streamed_with_dropped_rows(tmp_path) -> StreamedTable:
    """_table() streamed from _folder's files, with a split and 3 rows of missing values."""
    frame = _table()
    frame.loc[[5, 1200, 2999], "a"] = np.nan
    return load_table(str(_folder(tmp_path, frame)), "price", missing="drop",
                      split={"val": 0.2, "test": 0.0, "seed": 3}, stream=True,
                      shuffle_window=300)  # fmt: skip


def _counted_reads(monkeypatch) -> list[tuple[int, int]]:
    """The (file, row group) of every row group read from now on, in order."""
    from linreg_lab import streamed

    reads = []
    real_read = streamed.RowGroups.read

    def counted(self, file, group, columns):
        reads.append((file, group))
        return real_read(self, file, group, columns)

    monkeypatch.setattr(streamed.RowGroups, "read", counted)
    return reads


def _assert_rebuilt(whole: list[np.ndarray], shares: list[list[tuple]]) -> None:
    """Every window's rows (whole: one process's, in order) put back together from each
    rank's (rows, order, owned) of it (StreamedTable.shares), exactly."""
    for w, rows in enumerate(whole):
        rebuilt = np.full_like(rows, np.nan)
        for share in shares:
            local, order, owned = share[w]
            mine = order < owned
            rebuilt[mine] = local[order[mine]]
        np.testing.assert_array_equal(rebuilt, rows)


def test_each_rank_reads_its_own_row_groups_and_together_they_make_every_window(
    tmp_path, monkeypatch
):
    """A data-parallel rank's view (StreamedTable.shares): it reads only its row groups, and
    its rows, put where its order says, rebuild with the other ranks' the single process's
    windows exactly (with a split and the dropped rows of missing values)."""
    data = _streamed_with_dropped_rows(tmp_path)
    reads = _counted_reads(monkeypatch)
    whole = [rows[order].copy() for rows, order in data.windows(2, True, 5, 32)]
    assert len(reads) == len(data.groups) and len(whole) > 2
    for size in (2, 3):
        reads.clear()
        shares = [[(rows.copy(), order, owned) for rows, order, owned in
                   data.shares(2, True, 5, 32, rank, size)] for rank in range(size)]  # fmt: skip
        assert sorted(reads) == sorted({(f, g) for f, g, _ in data.groups})  # each group once
        held = [sum(owned for _, _, owned in share) for share in shares]
        assert sum(held) == data.num_samples  # each training row held by one rank
        assert max(held) - min(held) <= 400  # even, within a row group (97 to 400 rows)
        _assert_rebuilt(whole, shares)


def test_ranks_that_hold_their_share_read_it_once_and_make_the_same_windows(tmp_path, monkeypatch):
    """A holding table (StreamedTable.hold: each rank's share fits where the table does not):
    each rank reads its row groups in the first epoch only, keeps their packed rows (held, the
    caller's, trained where they lie), and later epochs' windows are still the single
    process's, bit for bit."""
    import dataclasses

    data = _streamed_with_dropped_rows(tmp_path)
    reads = _counted_reads(monkeypatch)
    holding = dataclasses.replace(data, hold=True)
    size, held = 2, [{}, {}]
    for epoch in (1, 2, 3):
        whole = [rows[order].copy() for rows, order in data.windows(epoch, True, 5, 32)]
        reads.clear()
        shares = [[(rows.copy(), order, owned) for rows, order, owned in
                   holding.shares(epoch, True, 5, 32, rank, size, held=held[rank])]
                  for rank in range(size)]  # fmt: skip
        if epoch == 1:  # each group read once, by the rank that keeps it
            assert sorted(reads) == sorted({(f, g) for f, g, _ in data.groups})
            assert not held[0]["packed"] & held[1]["packed"]
            assert len(held[0]["packed"]) + len(held[1]["packed"]) == len(data.groups)
            # each rank holds about half the training rows (one array), and no more
            assert len(held[0]["rows"]) - 1 + len(held[1]["rows"]) - 1 == data.num_samples
            assert abs(len(held[0]["rows"]) - len(held[1]["rows"])) <= 400
        else:
            assert reads == []
        _assert_rebuilt(whole, shares)


def test_held_out_losses_are_those_of_the_held_out_rows(tmp_path):
    frame = _table(2000)
    folder = _folder(tmp_path, frame)
    data = load_table(str(folder), "price", split={"val": 0.25, "test": 0.25, "seed": 1},
                      stream=True)  # fmt: skip
    parts = parts_of(np.arange(len(frame)), data.fractions)
    w, b = torch.tensor([0.5, -1.0, 2.0]), 0.3
    for part, sums in ((1, data.val_sums), (2, data.test_sums)):
        rows = frame[parts == part]
        X = (rows[["a", "b", "c"]].to_numpy() - data.scaling.x_mean) / data.scaling.x_scale
        mse = float(np.mean((X @ w.double().numpy() + b - rows.price.to_numpy()) ** 2))
        assert sums.loss_of(w, b) == pytest.approx(mse, rel=1e-9)


def test_the_first_pass_gives_the_same_bits_on_any_number_of_threads(tmp_path):
    """Each thread sums whole row groups; their sums are added in the groups' order."""
    folder = _folder(tmp_path, _table(2000))
    split = {"val": 0.25, "test": 0.25, "seed": 1}
    from linreg_lab import streamed

    threads = torch.get_num_threads()
    try:
        passes = []
        for count in (1, 2, 4):  # the pass's threads: 1 (one after another), 2, 4
            torch.set_num_threads(count)
            with pytest.MonkeyPatch.context() as patch:
                if count == 1:
                    patch.setattr(streamed, "_pass_workers", lambda: 1)
                passes.append(load_table(str(folder), "price", split=split, stream=True))
    finally:
        torch.set_num_threads(threads)
    for data in passes[1:]:
        assert data.group_rows == passes[0].group_rows
        for part in ("optimum", "val_sums", "test_sums"):
            assert torch.equal(getattr(data, part).w, getattr(passes[0], part).w)
            assert getattr(data, part).loss == getattr(passes[0], part).loss


def test_missing_values_and_bad_settings_are_one_line(tmp_path):
    frame = _table(500)
    frame.loc[[3, 300], "b"] = np.nan
    frame.to_parquet(tmp_path / "gaps.parquet", row_group_size=100)
    with pytest.raises(DataError, match="dataset.missing=drop"):
        load_table(str(tmp_path / "gaps.parquet"), "price", stream=True)
    dropped = load_table(str(tmp_path / "gaps.parquet"), "price", missing="drop", stream=True,
                         split=NO_SPLIT)  # fmt: skip
    assert dropped.dropped_rows == 2 and dropped.num_samples == 498
    rows = np.concatenate([r.copy() for r, _ in dropped.windows(1, False, 0, 10)])
    assert rows.shape == (498, 4) and np.isfinite(rows).all()
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="dataset.stream=true is not allowed for t.csv"):
        load_table(str(tmp_path / "t.csv"), "price", stream=True)
    with pytest.raises(DataError, match="dataset.stream=maybe is not allowed: true, false or auto"):
        load_table(str(tmp_path / "gaps.parquet"), "price", stream="maybe")
    with pytest.raises(DataError, match="dataset.shuffle_window=0 is not allowed"):
        load_table(str(tmp_path / "gaps.parquet"), "price", stream=True, shuffle_window=0)


def test_auto_streams_a_table_over_the_memory_budget(tmp_path):
    _table(400).to_parquet(tmp_path / "t.parquet")
    path = str(tmp_path / "t.parquet")
    assert not load_table(path, "price").streamed  # 6 KB: far under half this machine
    assert load_table(path, "price", memory_budget_gb=1e-6).streamed  # 1 KB


def test_the_default_budget_is_half_of_what_this_task_may_use(tmp_path, monkeypatch):
    """The cgroup's limit (or a parent's), SLURM's allocation, shared by the job's tasks here."""
    from linreg_lab.streamed import _memory_limits, memory_budget

    for key in ("LOCAL_WORLD_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_STEP_NUM_TASKS",
                "SLURM_NODEID", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    alone = memory_budget(None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc-per-node=4
    assert memory_budget(None) == alone // 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    # SLURM: 3 tasks on the first node, 2 on each of the next two; this task on the second
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "7")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "3,2(x2)")
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert memory_budget(None) == alone // 2
    monkeypatch.setenv("SLURM_NODEID", "0")
    assert memory_budget(None) == alone // 3
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "0")  # sbatch --mem=0: the whole node's
    assert memory_budget(None) == alone // 3
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "300")  # sbatch --mem=300M
    assert memory_budget(None) == 300 * 2**20 // 2 // 3
    assert memory_budget(1.5) == int(1.5 * 2**30)  # a budget the user set is theirs
    # cgroup v2 and v1: the process's own group and its parents, the lowest limit
    v2 = tmp_path / "v2"
    (v2 / "job_7" / "step_0").mkdir(parents=True)
    (v2 / "memory.max").write_text("max\n")
    (v2 / "job_7" / "memory.max").write_text(f"{2**30}\n")
    (v2 / "job_7" / "step_0" / "memory.max").write_text("max\n")
    (tmp_path / "cgroup2").write_text("0::/job_7/step_0\n")
    assert _memory_limits(str(tmp_path / "cgroup2"), str(v2), env={}) == [2**30]
    v1 = tmp_path / "v1" / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2**31}\n")
    (tmp_path / "cgroup1").write_text("5:cpu:/x\n4:memory:/docker/abc\n0::/\n")
    assert _memory_limits(str(tmp_path / "cgroup1"), str(tmp_path / "v1"), env={}) == [2**31]


@pytest.mark.slow
def test_linreg_train_streams_a_folder_and_refuses_what_it_cannot_stream(tmp_path, store):
    folder = _folder(tmp_path, _table())
    table = ["dataset=table", f"dataset.path={folder}", "dataset.target=price",
             "dataset.stream=true", "dataset.split.test=0.1"]  # fmt: skip
    result = store.command(*table, "trainer.epochs=4", "optimizer.lr=0.05")
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and run.data.tags["linreg.streamed"] == "true"
    assert "streamed: " in result.stdout
    metrics = run.data.metrics
    assert metrics["error/lsq_l2"] < 0.1 and {"val/loss", "test/loss"} <= set(metrics)
    history = store.client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    refused = store.command(*table, "trainer.engine=autograd", check=False)
    (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
    assert refused.returncode == 2 and "dataset.stream" in line and "autograd" in line
    assert len(store.runs()) == 1  # refused before any run
    # The vectorized launcher groups jobs by config; a table that stream=auto streams has no
    # rows in memory to share: its jobs train one by one, each its own run.
    auto = [t for t in table if not t.startswith("dataset.stream")]
    store.command("-m", *auto, "dataset.memory_budget_gb=1e-6", "hydra/launcher=vectorized",
                  "optimizer.lr=0.01,0.03", "trainer.epochs=2")  # fmt: skip
    jobs = [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]
    assert len(jobs) == 2 and all(r.info.status == "FINISHED" for r in jobs)
    assert {r.data.tags["linreg.engine"] for r in jobs} == {"analytic"}
    assert {r.data.tags["linreg.streamed"] for r in jobs} == {"true"}


@pytest.mark.slow
def test_ctrl_c_mid_epoch_ends_a_streamed_run_killed(tmp_path, store):
    """Ctrl-C while a window trains and the next row group is being read: exit 130, the run
    KILLED with the epochs it logged."""
    from tests.test_failures import interrupt

    folder = _folder(tmp_path, _table(30_000))
    interrupt(store, "dataset=table", f"dataset.path={folder}", "dataset.target=price",
              "dataset.stream=true", "dataset.shuffle_window=1000",
              "trainer.epochs=100000")  # fmt: skip
    (run,) = store.runs()
    assert run.info.status == "KILLED" and "SIGINT" in run.data.tags["linreg.failure"]
    assert len(store.client.get_metric_history(run.info.run_id, "train/loss")) >= 1


def test_losses_from_the_sums_keep_their_digits_for_a_target_far_from_zero(tmp_path):
    """The target is not standardized (the default) and its mean is 10^7: the sums are
    centred all the same, so the optimum's loss and any parameters' validation loss equal
    the rows' own to float64 precision."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(50, 10, 20_000), "b": rng.normal(0, 1, 20_000)})
    frame["y"] = 1e7 + 2 * frame.a - 3 * frame.b + rng.normal(0, 0.1, 20_000)
    frame.to_parquet(tmp_path / "far.parquet", row_group_size=3000)
    data = load_table(str(tmp_path / "far.parquet"), "y", split={"val": 0.2, "test": 0.0,
                      "seed": 1}, stream=True)  # fmt: skip
    parts = parts_of(np.arange(len(frame)), data.fractions)
    train, val = frame[parts == TRAIN], frame[parts == VAL]
    A = np.c_[train[["a", "b"]].to_numpy(), np.ones(len(train))]
    theta = np.linalg.lstsq(A, train.y.to_numpy(), rcond=None)[0]
    exact = np.mean((A @ theta - train.y.to_numpy()) ** 2)
    assert data.optimum.loss == pytest.approx(exact, rel=1e-7)
    X = (val[["a", "b"]].to_numpy() - data.scaling.x_mean) / data.scaling.x_scale
    w, b = data.optimum.w.double(), data.optimum.b
    direct = np.mean((X @ w.numpy() + b - val.y.to_numpy()) ** 2)
    assert data.val_sums.loss_of(w, b) == pytest.approx(direct, rel=1e-7)


def test_a_folder_of_many_files_holds_one_open_at_a_time_in_natural_order(tmp_path):
    import os

    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(40):  # part-0 .. part-39: part-10 comes after part-9, not after part-1
        rows = pd.DataFrame({"x": np.arange(i * 10, i * 10 + 10, dtype=float)})
        rows["y"] = 2 * rows.x + 1
        rows.to_parquet(folder / f"part-{i}.parquet")
    loaded = load_table(str(folder), "y", split=NO_SPLIT, standardize=False, stream=False)
    assert loaded.X[:, 0].tolist() == list(range(400))  # the files' rows, in natural order
    data = load_table(str(folder), "y", split=NO_SPLIT, standardize=False, stream=True)
    before = len(os.listdir("/proc/self/fd"))
    for _rows, _order in data.windows(1, True, 0, 10):
        assert len(os.listdir("/proc/self/fd")) <= before + 4  # not one per file
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_how_a_table_is_read_is_not_what_it_holds():
    """The registered model's data key: the reading settings are left out (an upgrade that
    added them kept @best comparable); a streamed table's split is other rows, so it counts."""
    from linreg_lab.tracking.params import data_key

    table = {"dataset": {"_target_": "linreg_lab.tables.load_table", "path": "t.csv",
                         "target": "y", "split": {"val": 0.2, "test": 0.0, "seed": 0}}}  # fmt: skip
    reading = {"dataset": {**table["dataset"], "stream": "auto", "memory_budget_gb": None,
                           "shuffle_window": 500_000}}  # fmt: skip
    assert data_key(reading) == data_key(table) != data_key(reading, streamed=True)
