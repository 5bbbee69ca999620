"""Data-parallel jobs (trainer.processes): ranks on torch.distributed (gloo) that train one model
on the same global batches as one process, one run written by rank 0, and no rank that
outlives its job."""

from __future__ import annotations

import functools
import os
import re
import signal
import time

import pytest
import torch

from linreg_lab.data import make_synthetic_regression
from linreg_lab.engines import fit
from linreg_lab.engines.settings import TrainerSettings
from linreg_lab.model import init_linear


def _trained(data, lr=0.03, after_epoch=lambda epoch: None, **settings):
    torch.manual_seed(0)
    model = init_linear(torch.nn.Linear(data.num_features, 1))
    epochs, places = [], []
    trainer = TrainerSettings(**{"epochs": 3, "batch_size": 10, **settings})
    optimizer = functools.partial(torch.optim.SGD, lr=lr, momentum=0.5, weight_decay=1e-3)

    def on_epoch_end(epoch, last, w, b, *rest):
        epochs.append(last)
        after_epoch(epoch)

    fit(model, optimizer, data, trainer, on_epoch_end, places.extend)
    return torch.cat([model.weight.detach().view(-1), model.bias.detach()]), epochs, places


@pytest.mark.parametrize("processes", [2, 3])
def test_ranks_train_what_one_process_trains_on_the_same_global_batches(processes):
    """Shuffled batches of 10 (the last one short: 1003 rows), momentum and weight decay:
    the parameters and each epoch's last-batch loss equal one process's to float32 rounding."""
    data = make_synthetic_regression(num_samples=1003, true_w=[2.8, -1.7, 3.6], true_b=3.0,
                                     noise_std=0.01, seed=1)  # fmt: skip
    one, one_losses, one_places = _trained(data, compiled="false")
    compiled, _, _ = _trained(data, compiled="true")
    many, many_losses, places = _trained(data, processes=processes)
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(many, compiled, rtol=1e-5, atol=1e-5)
    assert many_losses == pytest.approx(one_losses, rel=1e-3)  # near the noise: ~1e-4
    assert one_places == [] and len(places) == processes
    pids = [int(place.rsplit(":", 1)[1]) for place in places]
    assert pids[0] == os.getpid() and len(set(pids)) == processes


@pytest.mark.slow
def test_least_squares_reference_is_the_single_process_one(store):
    """One run, written by rank 0: the same reference, metrics and parameters as one process,
    plus where each rank ran."""
    one = store.command("trainer.processes=1", "tracking.run_name=one")
    two = store.command("trainer.processes=2", "tracking.run_name=two")
    assert "FINISHED" in one.stdout and "FINISHED" in two.stdout
    runs = {r.info.run_name: r for r in store.runs()}
    assert set(runs) == {"one", "two"}
    a, b = runs["one"].data, runs["two"].data
    assert b.params["trainer.processes"] == "2" and "linreg.ranks" not in a.tags
    assert len(b.tags["linreg.ranks"].split()) == 2
    assert b.metrics["optimum/loss"] == pytest.approx(a.metrics["optimum/loss"], rel=1e-9)
    for key in ("param/w_0", "param/w_1", "param/w_2", "param/b", "train/loss"):
        assert b.metrics[key] == pytest.approx(a.metrics[key], rel=1e-4, abs=1e-6), key


def test_bad_process_settings_are_one_line_before_any_run(store):
    for args, words in [
        (["trainer.processes=0"], ["trainer.processes", "0", "1 to 256"]),
        (["trainer.processes=two"], ["trainer.processes", "two"]),
        (["trainer.processes=2", "optimizer=adam"], ["trainer.processes=2", "autograd"]),
        (["trainer.processes=5", "dataset.num_samples=4"], ["trainer.processes=5", "(4)"]),
    ]:
        result = store.command(*args, check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert all(word in lines[0] for word in words), (args, lines[0])
    assert store.runs() == []


def _ranks_of(pid: int) -> list[int]:
    """The spawned ranks whose parent is pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:
                command = cmd.read()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:
            found.append(int(entry))
    return found


_LONG = ["trainer.processes=2", "dataset.num_samples=100000", "trainer.batch_size=100",
         "trainer.epochs=100000"]  # fmt: skip


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_fails_the_run_naming_it(store):
    from tests.test_failures import start_in_group, wait_for_metric

    # 3 ranks, the last killed: rank 1 exits too when its next step fails, and is not the one
    # named
    process = start_in_group(store, "trainer.processes=3", *_LONG[1:])
    try:
        wait_for_metric(store, "linreg")
        (run,) = store.runs()
        places = run.data.tags["linreg.ranks"].split()  # host:pid of each rank, rank 0 first
        rank = int(places[2].rpartition(":")[2])
        assert rank in _ranks_of(process.pid)
        os.kill(rank, signal.SIGKILL)
        killed = time.monotonic()
        assert process.wait(timeout=30) == 1
        assert time.monotonic() - killed < 30
        out = process.stdout.read() + process.stderr.read()
    finally:
        process.kill()
    (run,) = store.runs()
    assert run.info.status == "FAILED"
    reason = run.data.tags["linreg.failure"]
    assert f"rank 2 of 3 (pid {rank}) killed by SIGKILL" in reason and reason in out
    assert len(store.client.get_metric_history(run.info.run_id, "train/loss")) >= 1


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_and_ends_the_run_killed(store):
    from tests.test_failures import interrupt

    ranks = interrupt(store, *_LONG[:1], "trainer.processes=3", *_LONG[1:],
                      before=lambda process: _ranks_of(process.pid))  # fmt: skip
    assert len(ranks) == 2
    (run,) = store.runs()
    assert run.info.status == "KILLED" and "SIGINT" in run.data.tags["linreg.failure"]
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{rank}") for rank in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [rank for rank in ranks if os.path.exists(f"/proc/{rank}")]


@pytest.mark.slow
def test_a_sweep_of_data_parallel_jobs(store):
    """Each job its own ranks, one run each; the vectorized launcher trains them one by one."""
    store.command("-m", "trainer.processes=2", "optimizer.lr=0.01,0.03",
                  "hydra/launcher=vectorized")  # fmt: skip
    jobs = [r for r in store.runs() if "mlflow.parentRunId" in r.data.tags]
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FINISHED"}
    assert all(len(r.data.tags["linreg.ranks"].split()) == 2 for r in jobs)


def test_a_busy_rendezvous_port_is_one_line_before_rank_0_opens_a_run():
    import socket

    from linreg_lab.engines.distributed import World
    from linreg_lab.engines.settings import EngineError

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        world = World(0, 2, f"tcp://vm:{port}", "SLURM")
        with pytest.raises(EngineError, match=f"MASTER_PORT={port}: .* in use on vm"):
            world.check()
        World(1, 2, f"tcp://vm:{port}", "SLURM").check()  # rank 0's port: rank 1 does not bind
    world.check()  # free again


@pytest.mark.slow
def test_torchrun_starts_the_ranks_and_rank_0_writes_the_one_run(store):
    """torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): one run, the
    same parameters as one process."""
    from tests.conftest import BIN

    store.command("tracking.run_name=one")
    store.run("torchrun", "--nproc-per-node=2", str(BIN / "linreg-train"),
              "tracking.run_name=two", timeout=300)  # fmt: skip
    runs = {r.info.run_name: r for r in store.runs()}
    assert set(runs) == {"one", "two"}  # rank 1 opened no run
    two = runs["two"].data
    assert runs["two"].info.status == "FINISHED" and len(two.tags["linreg.ranks"].split()) == 2
    assert two.params["trainer.processes"] == "2"  # the world size, from torchrun's environment
    for key in ("param/w_0", "param/b", "train/loss"):
        assert two.metrics[key] == pytest.approx(runs["one"].data.metrics[key], rel=1e-4), key


@pytest.mark.slow
def test_torchrun_ranks_split_a_streamed_tables_first_pass(tmp_path, store):
    """Under torchrun every rank makes its own row groups' part of the first pass, and one
    reduction adds them: the reference, the standardization and the training equal one
    process's, and each rank says which part it read."""
    from tests.conftest import BIN
    from tests.test_streamed import _folder, _table

    folder = _folder(tmp_path, _table(6000))
    table = ["dataset=table", f"dataset.path={folder}", "dataset.target=price",
             "dataset.stream=true", "dataset.split.val=0.2", "trainer.epochs=2"]  # fmt: skip
    store.command(*table, "tracking.run_name=one")
    two = store.run("torchrun", "--nproc-per-node=2", str(BIN / "linreg-train"), *table,
                    "tracking.run_name=two", timeout=300)  # fmt: skip
    said = two.stdout + two.stderr
    parts = [int(n) for n in re.findall(r"first pass's (\d+) of (\d+) row groups", said)[0]]
    assert "on rank 0 of 2" in said and "on rank 1 of 2" in said, said
    assert 0 < parts[0] < parts[1], said
    runs = {r.info.run_name: r for r in store.runs()}
    one, two = runs["one"].data, runs["two"].data
    assert runs["two"].info.status == "FINISHED" and two.params["trainer.processes"] == "2"
    assert two.metrics["optimum/loss"] == pytest.approx(one.metrics["optimum/loss"], rel=1e-9)
    stability = [key for key in one.params if key.startswith("stability.")]
    assert stability, one.params
    for key in stability:  # the curvature and lr bounds, from the sums; the verdict
        if one.params[key][:1].isdigit():
            assert float(two.params[key]) == pytest.approx(float(one.params[key]), rel=1e-9)
        else:
            assert two.params[key] == one.params[key], key
    # auto, with a budget the table (96 KB as float32) is over and each rank's half is not:
    # each rank holds its share's rows from the first epoch on; the same run.
    held = store.run("torchrun", "--nproc-per-node=2", str(BIN / "linreg-train"), *table,
                     "dataset.stream=auto", "dataset.memory_budget_gb=0.00007",
                     "tracking.run_name=held", timeout=300)  # fmt: skip
    assert "each of the 2 ranks holds its share's rows" in held.stdout + held.stderr
    assert "each rank holding its share's rows from the first epoch on" in held.stdout
    # A missing value in one rank's row groups: every rank stops, rank 0 says it, no run.
    frame = _table(6000)
    frame.loc[5990, "b"] = float("nan")
    (tmp_path / "bad").mkdir()
    bad = _folder(tmp_path / "bad", frame)
    result = store.run("torchrun", "--nproc-per-node=2", str(BIN / "linreg-train"), *table,
                       f"dataset.path={bad}", "tracking.run_name=bad", check=False,
                       timeout=300)  # fmt: skip
    assert result.returncode != 0
    said = "rows with NaN, inf or empty values (at least 1); set dataset.missing=drop"
    assert said in result.stderr, result.stderr
    assert "another rank" not in result.stderr  # (torchrun itself shows its traceback)
    assert {r.info.run_name for r in store.runs()} == {"one", "two", "held"}
    (held,) = [r for r in store.runs() if r.info.run_name == "held"]
    assert held.info.status == "FINISHED" and held.data.tags["linreg.streamed"] == "true"
    assert held.data.tags["linreg.held"] == "true" and "linreg.held" not in two.tags
    held = held.data
    for key in ("param/w_0", "param/w_1", "param/w_2", "param/b", "train/loss", "val/loss"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], rel=1e-4), key
        assert held.metrics[key] == pytest.approx(one.metrics[key], rel=1e-4), key


def test_a_streamed_table_on_ranks_trains_what_one_process_trains(tmp_path):
    """Every rank walks the same windows, reading only its own row groups, and sums the rows
    of each global batch that came from them: the same batches as one process streaming,
    shuffled, so the same parameters (float32 rounding)."""
    from linreg_lab.tables import load_table
    from tests.test_streamed import _folder, _table

    folder = _folder(tmp_path, _table())
    split = {"val": 0.2, "test": 0.0, "seed": 3}
    table = load_table(str(folder), "price", split=split, stream=True, shuffle_window=500)
    one, one_losses, _ = _trained(table, compiled="true", batch_size=32)
    for processes in (2, 3):
        many, losses, places = _trained(table, processes=processes, batch_size=32)
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-5)
        assert losses == pytest.approx(one_losses, rel=1e-3) and len(places) == processes
    # Ranks that hold their share (StreamedTable.hold, as under SLURM or torchrun with
    # stream=auto): the same training, and no read after the first epoch (every file is
    # broken once it ends: rank 0 reads its next epoch's groups only after this callback).
    import dataclasses

    def break_the_files(epoch: int) -> None:
        if epoch == 1:
            for path in folder.glob("*.parquet"):
                path.write_bytes(b"PAR1" + bytes(2000) + b"PAR1")

    held, losses, _ = _trained(dataclasses.replace(table, hold=True), processes=2,
                               batch_size=32, after_epoch=break_the_files)  # fmt: skip
    torch.testing.assert_close(held, one, rtol=1e-5, atol=1e-5)
    assert losses == pytest.approx(one_losses, rel=1e-3)


def test_a_rank_that_cannot_read_its_row_group_is_named_with_why(tmp_path):
    """Only rank 1 reads the second file's row group (the first goes to rank 0, the second
    to the rank holding fewer rows); broken after the first pass, rank 0 says which and why."""
    import pandas as pd

    from linreg_lab.engines.monitor import RankFailed
    from linreg_lab.tables import load_table
    from tests.test_streamed import _table

    folder = tmp_path / "two"
    folder.mkdir()
    frame = _table(400)
    frame[:200].to_parquet(folder / "part-0.parquet")
    frame[200:].to_parquet(folder / "part-1.parquet")
    table = load_table(str(folder), "price", split={"val": 0.0, "test": 0.0, "seed": 0},
                       stream=True)  # fmt: skip
    assert pd.read_parquet(folder / "part-1.parquet").shape == (200, 4)
    (folder / "part-1.parquet").write_bytes(b"PAR1" + bytes(2000) + b"PAR1")
    with pytest.raises(RankFailed) as failed:
        _trained(table, processes=2, shuffle=False, batch_size=100)
    message = str(failed.value)
    assert message.startswith("rank 1 of 2 (pid ") and "exited with code 1: " in message
    assert "part-1.parquet: cannot read it as parquet" in message, message


@pytest.mark.slow
def test_linreg_train_streams_a_folder_on_3_ranks_and_ctrl_c_stops_them(tmp_path, store):
    from tests.test_failures import interrupt
    from tests.test_streamed import _folder, _table

    folder = _folder(tmp_path, _table(30_000))
    # (batch 100: 3 ranks on 2 cores make each step's reduction slow)
    table = ["dataset=table", f"dataset.path={folder}", "dataset.target=price",
             "dataset.stream=true", "trainer.processes=3", "trainer.batch_size=100"]  # fmt: skip
    store.command(*table, "trainer.epochs=2", "tracking.run_name=short")
    (run,) = store.runs()
    assert run.info.status == "FINISHED" and run.data.tags["linreg.streamed"] == "true"
    assert len(run.data.tags["linreg.ranks"].split()) == 3
    ranks = interrupt(store, *table, "dataset.shuffle_window=1000", "trainer.epochs=100000",
                      count=2, before=lambda process: _ranks_of(process.pid))  # fmt: skip
    killed = [r for r in store.runs() if r.info.status == "KILLED"]
    assert len(killed) == 1 and len(ranks) == 2
    time.sleep(2)
    assert not [rank for rank in ranks if os.path.exists(f"/proc/{rank}")]
