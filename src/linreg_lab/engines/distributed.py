"""Data-parallel SGD on torch.distributed: one job trained by trainer.processes ranks.

Rank r owns the r-th of P contiguous blocks of the table's rows (its share; P is the world
size), packed with their targets. Every rank draws the same seeded orders (orders.py) and
walks the same global batches; each cuts a batch to the rows it owns (kernels.owned_rows) and
sums their gradient with the compiled loop's own per-row code (kernels.gradient_sums); one
collective of D + 2 values per step (the gradient and the squared residuals: Share.reduce)
gives every rank the global batch's gradient, and every rank takes the same step (analytic.sgd_step,
torch.optim.SGD's update). trainer.batch_size is the global batch: results equal one
process's to float32 rounding.

A streamed table (streamed.StreamedTable) is trained the same way, window by window: every
rank walks the same windows and orders (one process's), but reads only the row groups it owns
(each to the rank holding the fewest rows, StreamedTable.shares), and sums the rows of each
global batch that came from them; so the Parquet decoding and the packing of rows are split
between the ranks and the batches, and the results, are still the single process's.

Rank 0 is the run's own process: it starts the other ranks (spawned processes that die with
it), measures and logs every epoch, and ends them when training ends or stops. The other
ranks only train: they log nothing. A rank that dies breaks the next collective (gloo sees its
socket close): rank 0 names it and the run ends FAILED.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from linreg_lab import signals
from linreg_lab.data import packed_rows
from linreg_lab.engines.ahead import Ahead
from linreg_lab.engines.analytic import SGDHyper, kernels, sgd_step
from linreg_lab.engines.monitor import RankFailed
from linreg_lab.engines.orders import seeded_orders
from linreg_lab.engines.settings import EngineError

BACKEND = "gloo"  # CPU tensors; nccl (GPUs) is not wired yet
# How long a rank waits for the others to join, and for a collective: a rank that *dies* is
# seen at once (its socket closes); this bounds a rank that hangs.
TIMEOUT = datetime.timedelta(seconds=60)
# How long ranks wait for each other at the end of a pass over a table (patient_group): each
# reads its own row groups, and a slow node or disk may finish long after the others.
PASS_WAIT = datetime.timedelta(hours=1)
_JOIN_SECONDS = 5.0  # for a rank to exit once training ended, before it is terminated


@dataclass(frozen=True)
class Share:
    """A rank's part of a job: the rows it owns, lo to hi - 1 (block rank of size)."""

    rank: int
    size: int
    lo: int
    hi: int
    failed: Callable[[BaseException], BaseException]  # the error to raise when a peer is gone
    _gathered: list = field(default_factory=list, repr=False, compare=False)

    def reduce(self, sums: torch.Tensor) -> None:
        """Sum sums over every rank, in place: every rank's sums gathered (all_gather), then
        added in rank order, element by element, so every rank holds the same bits whatever
        its CPU. On one machine gloo's all_gather of ~100 floats between 2 ranks takes ~0.6
        ms, its all_reduce ~1.4 ms (one message each way against the ring's several)."""
        if not self._gathered:
            self._gathered.extend(torch.empty_like(sums) for _ in range(self.size))
        try:
            _sum_in_rank_order(sums, self._gathered)
        except RuntimeError as error:  # gloo: a peer's connection closed, or a timeout
            raise self.failed(error) from None


def _sum_in_rank_order(sums: torch.Tensor, gathered: list[torch.Tensor], group=None) -> None:
    """sums (in place) summed over the ranks of group (the world's by default): every rank's
    gathered into gathered (all_gather), then added in rank order, element by element."""
    dist.all_gather(gathered, sums, group=group)
    sums.copy_(gathered[0])
    for part in gathered[1:]:
        sums.add_(part)


@dataclass(frozen=True)
class Job:
    """What every rank needs to walk the same batches: the plain settings, pickled to each."""

    hyper: SGDHyper
    num_samples: int
    epochs: int
    shuffle: bool
    seed: int
    batch_size: int
    threads: int


@dataclass(frozen=True)
class World:
    """Ranks started by something else (SLURM's tasks, torchrun): this process's place."""

    rank: int
    size: int
    init_method: str  # how the ranks meet: tcp://host:port, or env:// (torchrun's store)
    source: str  # "SLURM" or "torchrun"

    def check(self) -> None:
        """Rank 0's checks before its run exists: gloo is here, the rendezvous port is free."""
        if not (dist.is_available() and dist.is_gloo_available()):
            raise EngineError(f"{self.source} started {self.size} tasks, but this torch has no "
                              "gloo backend (torch.distributed): run one task")  # fmt: skip
        if self.rank != 0 or not self.init_method.startswith("tcp://"):
            return
        host, port = self.init_method.removeprefix("tcp://").rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", int(port)))
            except OSError as error:
                raise EngineError(
                    f"MASTER_PORT={port}: the rendezvous port of {self.size} {self.source} "
                    f"tasks is in use on {host} ({error.strerror}); set MASTER_PORT to a free "
                    "port, or unset it for one derived from the job"
                ) from None


def world_from_environment(job: str = "") -> World | None:
    """The world this process is a rank of, from its launcher's environment: torchrun's
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), or SLURM's when srun started several tasks
    (SLURM_PROCID, SLURM_STEP_NUM_TASKS; rank 0's host: the step's first node, the
    port MASTER_PORT or one derived from the SLURM job and job, so that jobs one after
    another in one task meet on ports of their own). None: one process."""
    env = os.environ
    if {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= set(env):
        size = int(env["WORLD_SIZE"])
        return World(int(env["RANK"]), size, "env://", "torchrun") if size > 1 else None
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks < 2 or "SLURM_PROCID" not in env:
        return None
    host = _first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "")
    port = env.get("MASTER_PORT")
    if not port:
        key = f"{env.get('SLURM_JOB_ID', '')}:{env.get('SLURM_STEP_ID', '')}:{job}"
        port = str(20000 + int(hashlib.sha256(key.encode()).hexdigest(), 16) % 40000)
    return World(int(env["SLURM_PROCID"]), tasks, f"tcp://{host}:{port}", "SLURM")


def tasks_on_this_node() -> int:
    """How many tasks of this process's launcher world run on this machine (each loads its
    own copy of an in-memory table): torchrun's LOCAL_WORLD_SIZE, SLURM's count for this
    node in SLURM_STEP_TASKS_PER_NODE ("2(x3),1": 2 on each of the first 3 nodes, then 1),
    by SLURM_NODEID; 1 for one process."""
    env = os.environ
    if env.get("LOCAL_WORLD_SIZE", "").isdigit():
        return max(1, int(env["LOCAL_WORLD_SIZE"]))
    counts = env.get("SLURM_STEP_TASKS_PER_NODE") or ""
    if int(env.get("SLURM_STEP_NUM_TASKS") or 1) < 2 or not counts:
        return 1
    per_node = []
    for part in counts.split(","):
        count, _, times = part.partition("(x")
        if not count.isdigit() or not (times.rstrip(")").isdigit() or not times):
            return 1  # a form this does not know: one task's share, as before
        per_node += [int(count)] * (int(times.rstrip(")")) if times else 1)
    node = int(env.get("SLURM_NODEID") or 0)
    return max(1, per_node[node]) if node < len(per_node) else 1


@contextlib.contextmanager
def joined(world: World | None) -> Iterator[None]:
    """This process as world.rank for as long as the block runs (torch.distributed's default
    group): the data's first pass (a streamed table's, split between the ranks) and training;
    left however the block ends. None: one process, nothing joined. Its owner is the job
    (experiment.run), which loads and trains in it."""
    if world is None:
        yield
        return
    _join(world)
    try:
        yield
    finally:
        _leave_world()


def _join(world: World) -> None:
    try:
        _join_world(world.rank, world.size, world.init_method, torch.get_num_threads())
    except RuntimeError as error:  # no rank 0 at the address within TIMEOUT, or refused
        raise RankFailed(
            f"rank {world.rank} of {world.size} ({world.source}) could not meet "
            f"the others at {world.init_method}: {_first_line(error)}"
        ) from None


def joined_rank() -> tuple[int, int]:
    """(rank, size) of the world this process has joined (joined), or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def from_rank_0(values: np.ndarray) -> np.ndarray:
    """Rank 0's values (float64, the same shape on every rank), on every rank."""
    tensor = torch.from_numpy(np.array(values, np.float64))
    try:
        dist.broadcast(tensor, 0)
    except RuntimeError as error:  # gloo: a peer's connection closed, or a timeout
        raise _lost(error) from None
    return tensor.numpy()


def least_over_ranks(value: float) -> float:
    """The least of value over the ranks of the world this process has joined (value itself
    in one process): a limit every rank must keep, the same on every rank."""
    if joined_rank()[1] < 2:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    except RuntimeError as error:  # gloo: a peer's connection closed, or a timeout
        raise _lost(error) from None
    return float(tensor[0])


def patient_group():
    """A group of every joined rank whose collectives wait up to PASS_WAIT for the others, not
    TIMEOUT: in a pass over a table each rank reads its own part, and they end far apart. A
    rank that dies is still seen at once (its socket closes), but one that dies before all
    have made the group is not: make it right after a collective of the world's. Left with
    the world (joined)."""
    try:
        return dist.new_group(timeout=PASS_WAIT)
    except RuntimeError as error:
        raise _lost(error) from None


def sum_over_ranks(values: np.ndarray, group) -> np.ndarray:
    """values (float64) summed over the ranks of group (patient_group), in rank order, so that
    every rank holds the same bits: a pass's sums, reduced once."""
    total = torch.from_numpy(np.array(values, np.float64))  # a copy, summed in place
    try:
        _sum_in_rank_order(total, [torch.empty_like(total) for _ in range(joined_rank()[1])],
                           group)  # fmt: skip
    except RuntimeError as error:  # gloo: a peer's connection closed, or the wait ran out
        raise _lost(error) from None
    return total.numpy()


def _lost(error: BaseException, source: str = "", places: list[str] | None = None
          ) -> BaseException:  # fmt: skip
    """A collective of a launcher's world failed: a stop, or a rank gone (named where places,
    each rank's host:pid, show which: a process of this host that no longer exists)."""
    if signals.stop_requested():  # scancel's SIGTERM reached every task: a stop
        return signals.Interrupted(signals.received() or signal.SIGTERM)
    rank, size = joined_rank()
    source = f" ({source})" if source else ""
    gone = ", ".join(f"rank {r} (pid {pid} on {host})" for r, host, pid in _gone(places or []))
    who = f"{gone} gone" if gone else "another rank stopped or lost contact"
    return RankFailed(f"rank {rank} of {size}{source}: {who} ({_first_line(error)})")


def _gone(places: list[str], wait: float = 1.0) -> list[tuple[int, str, int]]:
    """(rank, host, pid) of the ranks whose process on this host has ended (or is a zombie),
    waiting up to wait seconds for one: a peer's socket closes a moment before its end."""
    import psutil

    here, deadline = socket.gethostname(), time.monotonic() + wait
    while True:
        gone = []
        for rank, place in enumerate(places):
            host, _, pid = place.rpartition(":")
            if host == here and pid.isdigit() and not _alive(psutil, int(pid)):
                gone.append((rank, host, int(pid)))
        if gone or time.monotonic() > deadline or not places:
            return gone
        time.sleep(0.1)


def _alive(psutil, pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # NoSuchProcess
        return False


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("vm", "node[03-05,9]"), as scontrol expands it."""
    if "[" not in nodelist and nodelist:
        return nodelist.split(",")[0]
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                               text=True, timeout=30, check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        hosts = []
    if not hosts:
        raise EngineError(f"SLURM_STEP_NODELIST={nodelist}: scontrol could not expand it to "
                          "the hosts of this job's tasks")  # fmt: skip
    return hosts[0]


def blocks(num_samples: int, size: int) -> list[tuple[int, int]]:
    """The rows each rank owns: size contiguous blocks, as even as can be."""
    cuts = [rank * num_samples // size for rank in range(size + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def share_rows(X: torch.Tensor, y: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows lo..hi-1 packed [x y] (each target read with its row): a view where the data is
    packed already (synthetic data), else a copy."""
    packed = packed_rows(X, y)
    if packed is not None:
        return torch.from_numpy(packed[lo:hi])
    return _in_huge_pages(torch.cat((X[lo:hi], y.reshape(-1, 1)[lo:hi]), dim=1))


def _in_huge_pages(rows: torch.Tensor) -> torch.Tensor:
    """A copy of rows in memory numpy allocates: Linux backs large arrays of it with 2 MB
    pages (as make_synthetic_regression's), where torch's and shared memory's 4 KB pages cost
    a page-table walk per row read at random (measured: a rank's gradient over 5 x 10^4 rows
    of 5 x 10^6 x 101 took 9-10 ms on torch's or shared pages, 6.3 ms on numpy's)."""
    out = torch.from_numpy(np.empty(tuple(rows.shape), np.float32))
    return out.copy_(rows)


def train_data_parallel(
    theta: torch.Tensor,
    job: Job,
    X: torch.Tensor | None,
    y: torch.Tensor | None,
    processes: int,
    on_epoch_end: Callable[[int, float, float], None],
    on_places: Callable[[list[str]], None] = lambda places: None,
    table=None,
) -> None:
    """Train theta = [w, b] (updated in place) as rank 0 of processes ranks on this machine.

    on_epoch_end(epoch, last_batch_loss, b) runs here after each epoch; on_places(places):
    where each rank runs ("host:pid"), once they have all joined. table: a streamed table
    (X and y None): every rank reads its own row groups and trains their rows of each
    window's global batches.
    """
    rows = blocks(X.shape[0] if table is None else 0, processes)
    port = free_port()
    context = torch.multiprocessing.get_context("spawn")
    # Each rank's pipe, for the one line of what stopped it (pipes: no semaphore, so nothing
    # for multiprocessing's resource tracker to start for, or to warn about if rank 0 is killed)
    errors: list = []
    ranks = []
    try:
        for rank in range(1, processes):
            reader, writer = context.Pipe(duplex=False)
            part = None if table is not None else (
                share_rows(X, y, *rows[rank]).clone().share_memory_())  # fmt: skip
            process = context.Process(
                target=_rank_main,
                args=(rank, processes, port, job, theta.clone(), rows[rank], part, table,
                      writer),  # fmt: skip
                name=f"linreg-rank-{rank}", daemon=False,
            )  # fmt: skip
            process.start()
            writer.close()  # the rank's end now
            ranks.append(process)
            errors.append(reader)
            del part  # in shared memory now, held by its rank
        try:
            _join_world(0, processes, f"tcp://127.0.0.1:{port}", job.threads)
        except RuntimeError as error:  # a rank died before it joined (its imports, OOM)
            raise _failure(ranks, error, errors) from None
        try:
            try:
                places = _places(processes)
            except RuntimeError as error:
                raise _failure(ranks, error, errors) from None
            on_places(places)
            share = Share(0, processes, *rows[0], lambda error: _failure(ranks, error, errors))
            data = table if table is not None else share_rows(X, y, *rows[0])
            _train(theta, job, share, data, on_epoch_end)
        finally:
            _leave_world()
        _wait(ranks, errors)
    finally:  # also when training stops early (divergence, Ctrl-C) or a rank failed
        _end(ranks)
        for reader in errors:
            reader.close()


def train_in_world(
    theta: torch.Tensor,
    job: Job,
    X: torch.Tensor,
    y: torch.Tensor,
    world: World,
    on_epoch_end: Callable[[int, float, float], None],
    on_places: Callable[[list[str]], None] = lambda places: None,
    table=None,
) -> None:
    """Train theta as world.rank of a world its launcher started (SLURM's tasks, torchrun):
    every rank loaded the table and trains its block; rank 0 reports (on_epoch_end,
    on_places). A rank that stops (rank 0 ending training too) stops the others' next step.
    The world is joined here unless the job joined it before loading its data (joined)."""
    lo, hi = blocks(X.shape[0] if table is None else 0, world.size)[world.rank]
    rows = share_rows(X, y, lo, hi) if table is None else None
    torch.set_num_threads(job.threads)
    if not dist.is_initialized():
        _join(world)
    try:
        try:
            places = _places(world.size)
        except RuntimeError as error:  # a rank that died while the data loaded
            raise _lost(error, world.source) from None
        if world.rank == 0:
            on_places(places)
        report = on_epoch_end if world.rank == 0 else (lambda *args: None)
        share = Share(world.rank, world.size, lo, hi,
                      lambda error: _lost(error, world.source, places))  # fmt: skip
        _train(theta, job, share, table if table is not None else rows, report)
    finally:
        # Training is the world's last use: left now, however it ended, so that when rank 0
        # stops early (diverged, pruned) the others' next step fails at once, not after rank 0
        # has recorded its run (joined leaves it again, harmlessly).
        _leave_world()


def _train(theta: torch.Tensor, job: Job, share: Share, data, on_epoch_end) -> None:
    """Train theta on this rank's share of data (its block of rows, packed [x y], or a
    streamed table) for job.epochs epochs: the same global batches and steps on every rank."""
    steps = _Steps(theta, job, share)
    # Closed here, whatever ends training (a stop, a lost rank): their threads and files end
    # with it, not when the exception is freed.
    with contextlib.closing(_epochs(job, share, data)) as epochs:
        for epoch, windows in enumerate(epochs, start=1):
            try:
                for X, own, bounds, n in windows:
                    steps.run(X, own, bounds, n)
            finally:
                getattr(windows, "close", lambda: None)()  # an Ahead (a streamed epoch's)
            on_epoch_end(epoch, steps.last_loss(), float(theta[-1]))


def _epochs(job: Job, share: Share, data) -> Iterator:
    """Each epoch's windows, as the (X, own, bounds, n) this rank walks: n entries of one
    order cut in global batches, of which batch i's part here is X[own[bounds[i]:bounds[i +
    1]]] (_owned). A block of rows: one order an epoch (orders.seeded_orders, one
    process's), the next one drawn and cut while this one trains (Ahead); a streamed table:
    its windows, each rank holding the rows of its own row groups (StreamedTable.shares)."""
    batch = job.batch_size
    if isinstance(data, torch.Tensor):
        X = data.numpy()
        orders = seeded_orders(job.num_samples, job.epochs, job.shuffle, job.seed)
        cut = (_owned(order.numpy(), share.lo, share.hi, batch) for order in orders)
        with Ahead(cut, lowest=True) as ahead:
            for own, bounds in ahead:
                yield [(X, own, bounds, job.num_samples)]
        return
    held: dict = {}  # a holding table's rows of this rank, epoch to epoch (streamed._held_rows)
    for epoch in range(1, job.epochs + 1):
        # The next window is read, packed and cut while this one trains: a window's rows are
        # one rank's where its row groups are larger than the window, so the others make theirs
        # meanwhile, instead of after it (2 windows' memory a rank).
        # (At the usual priority: making windows is a streamed epoch's floor, not idle work.)
        windows = data.shares(epoch, job.shuffle, job.seed, batch, share.rank, share.size, 2,
                              held)  # fmt: skip
        yield Ahead((rows, *_owned(order, 0, owned, batch), len(order))
                    for rows, order, owned in windows)  # fmt: skip


class _Steps:
    """The data-parallel SGD step, written once: over each global batch, this rank's gradient
    sums (kernels.gradient_sums), one reduction of D + 2 values (the gradient and the squared
    residuals), and the same step on every rank (analytic.sgd_step, momentum carried on)."""

    def __init__(self, theta: torch.Tensor, job: Job, share: Share):
        self.theta, self.theta_np, self.hyper, self.share = theta, theta.numpy(), job.hyper, share
        self.batch = job.batch_size
        self.sums = torch.zeros(theta.shape[0] + 1, dtype=theta.dtype)
        self.buf = None
        self.count = self.batch  # the rows of the last batch taken

    def run(self, X: np.ndarray, own: np.ndarray, bounds: np.ndarray, n: int) -> None:
        """Every global batch of an order of n entries; batch i's part here: X[own[bounds[i]:
        bounds[i + 1]]]."""
        gradient_sums = kernels().gradient_sums
        d = self.theta.shape[0] - 1
        y, sums, grad = X[:, d], self.sums.numpy(), self.sums[: d + 1]
        for step, start in enumerate(range(0, n, self.batch)):
            if step % 64 == 0:
                signals.check()  # a stop request (Ctrl-C, SIGTERM) acts between steps
            self.count = min(self.batch, n - start)
            gradient_sums(X, y, own, bounds[step], bounds[step + 1], self.theta_np, sums)
            self.share.reduce(self.sums)
            grad.mul_(2.0 / self.count)
            self.buf = sgd_step(self.theta, grad, self.hyper, self.buf)

    def last_loss(self) -> float:
        """The last global batch's mean squared residual."""
        return float(self.sums[-1]) / self.count


def _owned(order: np.ndarray, lo: int, hi: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The entries of order a rank owns (lo .. hi - 1, as indices from lo, in order) and where
    each global batch's part begins: batch i is own[bounds[i]:bounds[i + 1]]."""
    n = order.shape[0]
    own = np.empty(min(hi - lo, n) + 1, np.int64)  # every entry written, the owned kept
    bounds = np.empty(-(-n // batch_size) + 1, np.int64)
    count = kernels().owned_rows(order, lo, hi, batch_size, own, bounds)
    return own[:count], bounds


def _rank_main(rank: int, size: int, port: int, job: Job, theta, block, rows, table,
               errors) -> None:  # fmt: skip
    """A rank other than 0: join the world, train its share, log nothing."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group: rank 0 decides, and ends this rank (SIGTERM: at
    # once; importing linreg-train's module here made it a flag to be checked).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if rows is not None:
        rows = _in_huge_pages(rows)  # and the shared copy released
    try:
        _join_world(rank, size, f"tcp://127.0.0.1:{port}", job.threads)
        _places(size)

        def peer_gone(error: BaseException) -> BaseException:
            return RankFailed(f"rank {rank}: rank 0 stopped ({_first_line(error)})")

        share = Share(rank, size, *block, peer_gone)
        _train(theta, job, share, table if table is not None else rows, lambda *args: None)
        _leave_world()
    except RankFailed:  # rank 0 stopped training (it ends this rank too): nothing to add
        sys.exit(1)
    except Exception as error:  # its own (a row group it alone reads, say): rank 0 says it
        errors.send(_first_line(error))
        sys.exit(1)


def _join_world(rank: int, size: int, init_method: str, threads: int) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(
        BACKEND, init_method=init_method, rank=rank, world_size=size, timeout=TIMEOUT
    )


def _leave_world() -> None:
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def _places(size: int) -> list[str]:
    places: list = [None] * size
    dist.all_gather_object(places, f"{socket.gethostname()}:{os.getpid()}")
    return places


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the world's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _failure(ranks, error: BaseException, errors) -> BaseException:
    """Rank 0's reduction failed: which rank died, and how (its exit, and the error it sent
    on its pipe, errors[rank - 1]), if one did; a stop (Ctrl-C, SIGTERM, scancel to every
    task) that reached the other ranks first is a stop."""
    if signals.stop_requested():
        return signals.Interrupted(signals.received() or signal.SIGTERM)
    for rank, process in enumerate(ranks, start=1):
        process.join(timeout=2.0 if rank == 1 else 0.2)
    said = {}
    for rank, reader in enumerate(errors, start=1):
        with contextlib.suppress(OSError, EOFError):
            if reader.poll():
                said[rank] = reader.recv()

    # Who stopped first: a rank that said its own error, else one a signal killed; the ranks
    # that exited 1 without a word only followed it (their collective failed).
    def first(item) -> tuple[bool, bool]:
        rank, process = item
        return rank not in said, (process.exitcode or 0) >= 0

    for rank, process in sorted(enumerate(ranks, start=1), key=first):
        code = process.exitcode
        if code is None:
            continue
        if code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                how += " (out of memory, or killed from outside)"
        else:  # the rank that said what stopped it first: the others followed it
            how = f"exited with code {code}" + (f": {said[rank]}" if rank in said else "")
        return RankFailed(f"rank {rank} of {len(ranks) + 1} (pid {process.pid}) {how}")
    return RankFailed(f"the ranks lost contact: {_first_line(error)}")


def _wait(ranks, errors) -> None:
    """Training ended on rank 0: the other ranks end by themselves once their last step is
    taken; one that does not exit (or exits with an error) is a failure."""
    for rank, process in enumerate(ranks, start=1):
        process.join(timeout=_JOIN_SECONDS)
        if process.exitcode not in (0, None):
            raise _failure(ranks, RuntimeError(f"rank {rank} exited with {process.exitcode}"),
                           errors)  # fmt: skip


def _end(ranks) -> None:
    """No rank outlives its job: terminate the ones still running, then kill."""
    for process in ranks:
        if process.is_alive():
            process.terminate()
    for process in ranks:
        process.join(timeout=_JOIN_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def _die_with_parent() -> None:
    """This rank gets SIGKILL when rank 0's process dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
