"""Every compiled loop of linreg-lab: the only module that imports numba.

The SGD loops for y_hat = X w + b under MSE (the analytic gradient, no autograd) follow
torch.optim.SGD to the letter: g = grad + weight_decay * p; with momentum, buf = g on the first
step, then buf = momentum * buf + (1 - dampening) * g; the step uses g + momentum * buf
(nesterov) or buf; p -= lr * step. theta packs [w_0 .. w_{D-1}, b]. D comes from theta: X may
have more columns, the targets packed beside the features (linreg_lab.data.packed_rows), read
in the same cache lines as each row. Arithmetic is float32, as torch's; sums may be reordered
(SIMD), which changes only rounding.

Also here: the vectorized engine's loop (K models, one read of each sampled row) and the
cache-friendly shuffle. prefetch_row is a numba intrinsic (LLVM's prefetch through numba's
extension API, numba.core.cgutils): it is what keeps shuffled reads of large data in flight
(~2-3x at N >= 10^6), and it lives here only.
"""

import os

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

# numba's own work queue for its few coarse parallel loops (the shuffle, the vectorized
# engine's models), unless NUMBA_THREADING_LAYER says otherwise: GNU OpenMP, the layer numba
# would pick here, stops a child forked after its threads ran (a launcher's worker). The split
# of each batch between threads (sgd_steps_share) runs on threads of our own (thread_team.py):
# numba's parallel loop per batch cost 20% of an epoch at N 2 x 10^6 on OpenMP, 6x on the queue.
if os.environ.get("NUMBA_THREADING_LAYER") is None:
    numba.config.THREADING_LAYER = "workqueue"


def usable_threads(wanted: int) -> int:
    """wanted threads, within numba's maximum (NUMBA_NUM_THREADS)."""
    return max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))


def start_threads() -> None:
    """Start numba's thread pool now, from this thread, if it has not started (its threads
    inherit this thread's CPU priority)."""
    numba.get_num_threads()


def set_threads(threads: int) -> None:
    """The thread count of the next parallel loops of this thread."""
    numba.set_num_threads(usable_threads(threads))


# Reordered sums vectorise the dot products; no "fast" flags that assume finite values, so a
# diverging run still produces the inf/NaN that stops it.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# How many samples ahead to prefetch: enough loads in flight to cover a memory latency.
_AHEAD = 16
_LINE_FLOATS = 16  # float32 values in a 64-byte cache line


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def sgd_steps(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, dampening, weight_decay, nesterov, prefetch,
):  # fmt: skip
    """Run the batches of order[begin:end]; returns (last batch loss, has_buf).

    prefetch: ask for rows _AHEAD samples early (worth it once X outgrows the caches).
    """
    lr, momentum = np.float32(lr), np.float32(momentum)
    keep, weight_decay = np.float32(1.0 - dampening), np.float32(weight_decay)
    if batch_size == 1 and momentum == 0 and weight_decay == 0:
        return _plain_per_sample(X, y, order, begin, end, theta, lr, prefetch), has_buf
    d = theta.shape[0] - 1
    grad = np.empty(d + 1, np.float32)
    last_loss = np.float32(np.nan)
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        last_loss = _batch_gradient(X, y, order, start, stop, end, theta, grad, prefetch)
        _sgd_update(theta, grad, buf, has_buf, lr, momentum, keep, weight_decay, nesterov)
        has_buf = True
    return last_loss, has_buf


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def sgd_steps_share(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, dampening, weight_decay, nesterov, thread, threads, shares, arrivals,
):  # fmt: skip
    """One thread's part of sgd_steps with each batch's rows split between threads (large,
    uncached X): run by each of threads threads at once, thread = 0 .. threads - 1.

    Every thread sums its share of the batch's gradient into shares[batch % 2, thread], then
    waits at a barrier (barrier.arrive_and_wait) until all shares are in, and applies the
    same update to its own theta and buf: the sums are added in thread order, so every copy
    stays equal, and the result depends on the thread count only through float32 rounding.
    Two slots of shares: a thread writes a slot again only after all have left it (they all
    met at the barrier in between). arrivals[1] != 0: a thread failed and will not come; stop.
    Returns (last batch loss, has_buf).
    """
    lr, momentum = np.float32(lr), np.float32(momentum)
    keep, weight_decay = np.float32(1.0 - dampening), np.float32(weight_decay)
    d = theta.shape[0] - 1
    grad = np.empty(d + 1, np.float32)
    last_loss = np.float32(np.nan)
    batch = 0
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        count = stop - start
        lo = start + thread * count // threads
        hi = start + (thread + 1) * count // threads
        # The next batch's share: its first rows are prefetched while this one ends.
        next_count = min(stop + batch_size, end) - stop
        next_lo = stop + thread * next_count // threads
        next_hi = stop + (thread + 1) * next_count // threads
        slot = shares[batch % 2]
        slot[thread, :] = 0
        slot[thread, d + 1] = _share_gradient(
            X, y, order, lo, hi, next_lo, next_hi, theta, slot[thread]
        )
        batch += 1
        if not arrive_and_wait(arrivals, threads, batch):
            return last_loss, has_buf
        squares = np.float32(0)
        for t in range(threads):
            squares += slot[t, d + 1]
        last_loss = squares / count
        scale = np.float32(2.0 / count)
        for j in range(d + 1):
            g = np.float32(0)
            for t in range(threads):
                g += slot[t, j]
            grad[j] = g * scale
        _sgd_update(theta, grad, buf, has_buf, lr, momentum, keep, weight_decay, nesterov)
        has_buf = True
    return last_loss, has_buf


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def gradient_sums(X, y, order, lo, hi, theta, out):
    """out[:D + 1] = the unscaled MSE gradient over rows order[lo:hi], out[D + 1] = their
    squared residuals: a data-parallel rank's part of a batch (engines.distributed), summed
    over the ranks before the step. The rows as sgd_steps reads them, prefetched."""
    out[:] = 0
    out[out.shape[0] - 1] = _share_gradient(X, y, order, lo, hi, hi, hi, theta, out)


@numba.njit(cache=True, nogil=True)
def owned_rows(order, lo, hi, batch_size, own, bounds):
    """A data-parallel rank's part of an epoch's order, for the rank that owns rows lo..hi-1:
    own[:k] = its rows in order (as indices into its share: row - lo); bounds[j]: where
    global batch j's part begins in own (bounds[-1] = k). Returns k. own holds
    min(hi - lo, len(order)) + 1:
    every entry is written and kept only if owned (no branch to mispredict on a shuffled
    order: 5x faster than testing each at 10^7 rows)."""
    n = order.shape[0]
    span = np.uint64(hi - lo)
    k = 0
    bounds[0] = 0
    for start in range(0, n, batch_size):
        for i in range(start, min(start + batch_size, n)):
            row = np.int64(order[i]) - lo
            own[k] = row
            k += np.int64(np.uint64(row) < span)  # lo <= order[i] < hi, as one comparison
        bounds[start // batch_size + 1] = k
    return k


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _sgd_update(theta, grad, buf, has_buf, lr, momentum, keep, weight_decay, nesterov):
    """One torch.optim.SGD step of theta from the batch gradient grad (buf: momentum)."""
    for j in range(theta.shape[0]):
        g = grad[j] + weight_decay * theta[j]
        if momentum != 0:
            buf[j] = momentum * buf[j] + keep * g if has_buf else g
            g = g + momentum * buf[j] if nesterov else buf[j]
        theta[j] -= lr * g


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _share_gradient(X, y, order, lo, hi, next_lo, next_hi, theta, share):
    """share += the unscaled MSE gradient over rows order[lo:hi]; returns their squared residuals.

    Rows are prefetched _AHEAD samples early, running on into order[next_lo:next_hi].

    Four rows at a time: their loads and dot products are independent, so more memory reads are
    in flight while the core computes (1.5-1.9x at N 10^7, D 100 on 2 threads).
    """
    d = theta.shape[0] - 1
    bias = theta[d]
    total = np.float32(0)
    k = lo
    while k + 3 < hi:
        for a in range(4):
            ahead = k + _AHEAD + a
            if ahead >= hi:
                ahead += next_lo - hi
                if ahead >= next_hi:
                    break
            prefetch_row(X, order[ahead])
            prefetch_row(y, order[ahead])
        x1, x2, x3, x4 = X[order[k]], X[order[k + 1]], X[order[k + 2]], X[order[k + 3]]
        r1, r2 = bias - y[order[k]], bias - y[order[k + 1]]
        r3, r4 = bias - y[order[k + 2]], bias - y[order[k + 3]]
        for j in range(d):
            w = theta[j]
            r1 += x1[j] * w
            r2 += x2[j] * w
            r3 += x3[j] * w
            r4 += x4[j] * w
        for j in range(d):
            share[j] += r1 * x1[j] + r2 * x2[j] + r3 * x3[j] + r4 * x4[j]
        share[d] += r1 + r2 + r3 + r4
        total += r1 * r1 + r2 * r2 + r3 * r3 + r4 * r4
        k += 4
    while k < hi:
        x = X[order[k]]
        residual = bias - y[order[k]]
        for j in range(d):
            residual += x[j] * theta[j]
        total += residual * residual
        for j in range(d):
            share[j] += residual * x[j]
        share[d] += residual
        k += 1
    return total


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _batch_gradient(X, y, order, start, stop, end, theta, grad, prefetch):
    """grad = d MSE / d theta over rows order[start:stop]; returns the batch's MSE."""
    d = theta.shape[0] - 1
    grad[:] = 0
    squares = np.float32(0)
    bias = theta[d]
    for k in range(start, stop):
        if prefetch and k + _AHEAD < end:
            prefetch_row(X, order[k + _AHEAD])
            prefetch_row(y, order[k + _AHEAD])
        row = order[k]
        x = X[row]
        residual = bias - y[row]
        for j in range(d):
            residual += x[j] * theta[j]
        squares += residual * residual
        for j in range(d):
            grad[j] += residual * x[j]
        grad[d] += residual
    count = stop - start
    scale = np.float32(2.0 / count)
    for j in range(d + 1):
        grad[j] *= scale
    return squares / count


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _plain_per_sample(X, y, order, begin, end, theta, lr, prefetch):
    """Batch 1 without momentum or decay: theta -= lr * 2 r [x, 1], no gradient buffer."""
    d = theta.shape[0] - 1
    squares = np.float32(np.nan)
    for k in range(begin, end):
        if prefetch and k + _AHEAD < end:
            prefetch_row(X, order[k + _AHEAD])
            prefetch_row(y, order[k + _AHEAD])
        row = order[k]
        x = X[row]
        residual = theta[d] - y[row]
        for j in range(d):
            residual += x[j] * theta[j]
        squares = residual * residual
        step = lr * np.float32(2) * residual
        for j in range(d):
            theta[j] -= step * x[j]
        theta[d] -= step
    return squares


# ---- the prefetch intrinsic ------------------------------------------------------------

_CACHE_LINE = 64
_PREFETCH = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()] + [ir.IntType(32)] * 3)


@intrinsic
def prefetch_row(typingctx, array, row):
    """Prefetch array[row] (a 1-D element or a C-contiguous 2-D row) into the data cache."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        row = context.cast(builder, args[1], signature.args[1], types.intp)  # int32 orders too
        index = [row] + [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
        start = cgutils.get_item_pointer(
            context, builder, array_type, view, index, wraparound=False
        )
        start = builder.bitcast(start, ir.IntType(8).as_pointer())
        row_bytes = builder.extract_value(view.strides, 0) if array_type.ndim > 1 else None
        prefetch = cgutils.get_or_insert_function(builder.module, _PREFETCH, "llvm.prefetch.p0i8")
        # read access, keep in all cache levels, data cache
        flags = [ir.Constant(ir.IntType(32), v) for v in (0, 3, 1)]
        if row_bytes is None:
            builder.call(prefetch, [start, *flags])
            return context.get_dummy_value()
        # One prefetch per cache line of the row: for offset in range(0, row_bytes, 64).
        with cgutils.for_range_slice(
            builder, context.get_constant(types.intp, 0), row_bytes,
            context.get_constant(types.intp, _CACHE_LINE),
        ) as (offset, _):  # fmt: skip
            builder.call(prefetch, [builder.gep(start, [offset]), *flags])
        return context.get_dummy_value()

    return types.void(array, row), codegen


# ---- K models in one pass (the vectorized engine) -------------------------------------

# Rows are requested this many samples ahead: each sample's work (K dot products) is long, so a
# few loads in flight cover a memory latency (~2x at N 10^6, D 100, K 4 to 8; 1.3x at K 16).
_AHEAD_MANY = 8


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _steps_models(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, keep, weight_decay, nesterov, last_loss, first, stop_model,
):  # fmt: skip
    """sgd_steps_many for the models first..stop_model - 1 only."""
    d = theta.shape[1] - 1
    grad = np.empty((stop_model - first, d + 1), np.float32)
    squares = np.empty(stop_model - first, np.float32)
    for start in range(begin, end, batch_size):
        stop = min(start + batch_size, end)
        grad[:] = 0
        squares[:] = 0
        s = start
        while s < stop:
            for a in range(s + _AHEAD_MANY, min(s + _AHEAD_MANY + 4, end)):
                prefetch_row(X, order[a])
                prefetch_row(y, order[a])
            if s + 4 <= stop:
                _add_four_rows(X, y, order, s, theta, grad, squares, first, stop_model)
                s += 4
            else:
                _add_row(X, y, order[s], theta, grad, squares, first, stop_model)
                s += 1
        count = stop - start
        scale = np.float32(2.0 / count)
        for m in range(first, stop_model):
            g_m, w, b = grad[m - first], theta[m], buf[m]
            for j in range(d + 1):
                g = g_m[j] * scale + weight_decay[m] * w[j]
                if momentum[m] != 0:
                    b[j] = momentum[m] * b[j] + keep[m] * g if has_buf else g
                    g = g + momentum[m] * b[j] if nesterov[m] else b[j]
                w[j] -= lr[m] * g
            last_loss[m] = squares[m - first] / count
        has_buf = True
    return has_buf


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _add_four_rows(X, y, order, s, theta, grad, squares, first, stop_model):
    """Add rows order[s:s + 4]' gradients and squared residuals to each model's grad, squares.

    Each weight is loaded once for the four rows' dot products, and each gradient entry once
    for their four updates (1.6x at N 10^6, D 100, K 16).
    """
    d = theta.shape[1] - 1
    x1, x2, x3, x4 = X[order[s]], X[order[s + 1]], X[order[s + 2]], X[order[s + 3]]
    t1, t2, t3, t4 = y[order[s]], y[order[s + 1]], y[order[s + 2]], y[order[s + 3]]
    for m in range(first, stop_model):
        w = theta[m]
        r1, r2, r3, r4 = w[d] - t1, w[d] - t2, w[d] - t3, w[d] - t4
        for j in range(d):
            r1 += x1[j] * w[j]
            r2 += x2[j] * w[j]
            r3 += x3[j] * w[j]
            r4 += x4[j] * w[j]
        g = grad[m - first]
        for j in range(d):
            g[j] += r1 * x1[j] + r2 * x2[j] + r3 * x3[j] + r4 * x4[j]
        g[d] += r1 + r2 + r3 + r4
        squares[m - first] += r1 * r1 + r2 * r2 + r3 * r3 + r4 * r4


@numba.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _add_row(X, y, row, theta, grad, squares, first, stop_model):
    """_add_four_rows for the one row X[row]."""
    d = theta.shape[1] - 1
    x = X[row]
    target = y[row]
    for m in range(first, stop_model):
        w = theta[m]
        residual = w[d] - target
        for j in range(d):
            residual += x[j] * w[j]
        g = grad[m - first]
        for j in range(d):
            g[j] += residual * x[j]
        g[d] += residual
        squares[m - first] += residual * residual


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def sgd_steps_many(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, keep, weight_decay, nesterov, last_loss,
):  # fmt: skip
    """Run the batches of order[begin:end] for every model; last_loss gets each one's MSE.

    theta and buf are (K, D + 1); keep = 1 - dampening; nesterov is a bool array.
    Returns has_buf.
    """
    return _steps_models(
        X, y, order, begin, end, batch_size, theta, buf, has_buf,
        lr, momentum, keep, weight_decay, nesterov, last_loss, 0, theta.shape[0],
    )  # fmt: skip


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, parallel=True)
def sgd_steps_many_parallel(
    X, y, order, begin, end, batch_size, theta, buf, has_buf,
    lr, momentum, keep, weight_decay, nesterov, last_loss, threads,
):  # fmt: skip
    """sgd_steps_many with the models split between threads; each thread reads every row."""
    k_models = theta.shape[0]
    for t in numba.prange(threads):
        _steps_models(
            X, y, order, begin, end, batch_size, theta, buf, has_buf,
            lr, momentum, keep, weight_decay, nesterov, last_loss,
            t * k_models // threads, (t + 1) * k_models // threads,
        )  # fmt: skip
    return has_buf or end > begin


# ---- the shuffle ------------------------------------------------------------------------
# A uniformly random permutation of 0..n-1 that stays in cache: ~15x torch.randperm at 10^7.
#
# torch.randperm swaps entries at random across the whole array, one cache miss per sample
# (0.6 s at N 10^7, as long as the epoch it orders). Here each index first goes to a random bucket
# (sequential writes), then each bucket, small enough for the L2 cache, is shuffled by
# Fisher-Yates (Rao-Sandelius): the result is still a uniform permutation.
#
# Both steps run on numba's threads: the indices are cut into a fixed number of chunks and each
# chunk, like each bucket, draws from its own random stream, so the permutation depends on the
# seed and n only, never on the thread count.

_BUCKET_BYTES = 1 << 19  # 64 K int64 entries per bucket: about one L2 cache
_CHUNK_ENTRIES = 1 << 18  # indices per chunk of the scatter (at most _MAX_CHUNKS chunks)
_MAX_CHUNKS = 64
_U32 = np.uint64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def permutation(n: int, seed: int, threads: int | None = None) -> np.ndarray:
    """A uniform random permutation of range(n) (int32, or int64 from 2^31), reproducible from
    seed in [0, 2^63).

    threads: how many of numba's threads to use (default: all); the result is the same.
    """
    buckets = 1
    while n * 8 > buckets * _BUCKET_BYTES and buckets < 1 << 16:
        buckets *= 2
    chunks = max(1, min(_MAX_CHUNKS, n // _CHUNK_ENTRIES))
    # int32 while it fits: half the memory to fault in, fill and read back each epoch.
    out = np.empty(n, np.int32 if n <= np.iinfo(np.int32).max else np.int64)
    # Each index's bucket, drawn once: one or two bytes written and read back are cheaper
    # than drawing it again.
    bucket_of = np.empty(n, np.uint8 if buckets <= 1 << 8 else np.uint16)
    args = (out, bucket_of, np.uint64(seed), buckets.bit_length() - 1, chunks)
    previous = numba.get_num_threads()
    numba.set_num_threads(usable_threads(threads or previous))
    try:
        _scatter_shuffle(*args)
    finally:
        numba.set_num_threads(previous)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _splitmix64(state):
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def _below(state, bound):
    """A uniform integer in [0, bound), bound <= 2^32 (Lemire's method, unbiased)."""
    s = np.uint64(bound)
    state, r = _splitmix64(state)
    m = (r >> np.uint64(32)) * s
    if (m & _U32) < s:
        threshold = ((_U32 + np.uint64(1)) - s) % s
        while (m & _U32) < threshold:
            state, r = _splitmix64(state)
            m = (r >> np.uint64(32)) * s
    return state, np.int64(m >> np.uint64(32))


@numba.njit(cache=True, nogil=True, inline="always")
def _stream(seed, index):
    """The starting state of random stream index (chunks, then buckets) of a permutation."""
    _, state = _splitmix64(seed + np.uint64(index) * _GOLDEN)
    return state


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket(r, bits):
    return np.int64(r >> np.uint64(64 - bits)) if bits > 0 else np.int64(0)


@numba.njit(cache=True, nogil=True, parallel=True)
def _scatter_shuffle(out, bucket_of, seed, bits, chunks):
    n = out.shape[0]
    buckets = 1 << bits
    # counts[c, k]: how many of chunk c's indices go to bucket k; then where they start.
    counts = np.zeros((chunks, buckets + 1), np.int64)
    for c in numba.prange(chunks):
        state = _stream(seed, c)
        for i in range(c * n // chunks, (c + 1) * n // chunks):
            state, r = _splitmix64(state)
            k = _bucket(r, bits)
            bucket_of[i] = k
            counts[c, k] += 1
    starts = np.zeros(buckets + 1, np.int64)
    position = 0
    for k in range(buckets):
        starts[k] = position
        for c in range(chunks):
            count = counts[c, k]
            counts[c, k] = position
            position += count
    starts[buckets] = position
    for c in numba.prange(chunks):
        fill = counts[c]
        for i in range(c * n // chunks, (c + 1) * n // chunks):
            k = bucket_of[i]
            out[fill[k]] = i
            fill[k] += 1
    for k in numba.prange(buckets):
        state = _stream(seed, chunks + k)
        begin = starts[k]
        for i in range(starts[k + 1] - begin - 1, 0, -1):
            state, j = _below(state, i + 1)
            out[begin + i], out[begin + j] = out[begin + j], out[begin + i]


# ---- the threads' meeting point after each batch (sgd_steps_share) ----------------------
# numba has no atomics of its own; these are LLVM's (through numba's extension API), so the
# compiler neither keeps a spun-on value in a register nor moves the threads' other reads and
# writes across them. A waiting thread spins a few microseconds (the usual wait: the others are
# running), then yields its core: with more threads than free cores (a parallel sweep,
# trainer.threads above the core count) a spinning thread would hold the core the thread it
# waits for needs, ~100x slower.

# Reads of the arrival count before a waiting thread starts yielding (~5-20 us).
_SPINS = 1 << 12


def _element_pointer(context, builder, array_type, array, index, index_type):
    view = context.make_array(array_type)(context, builder, array)
    index = context.cast(builder, index, index_type, types.intp)
    return cgutils.get_item_pointer(context, builder, array_type, view, [index], wraparound=False)


@intrinsic
def atomic_add(typingctx, array, index, value):
    """array[index] += value as one atomic step (sequentially consistent); returns the old value."""

    def codegen(context, builder, signature, args):
        array_type, index_type, value_type = signature.args
        pointer = _element_pointer(context, builder, array_type, args[0], args[1], index_type)
        value = context.cast(builder, args[2], value_type, array_type.dtype)
        return builder.atomic_rmw("add", pointer, value, "seq_cst")

    return array.dtype(array, index, value), codegen


@intrinsic
def atomic_read(typingctx, array, index):
    """array[index], read afresh from memory every time (acquire: later reads see what the
    writer wrote before its atomic_add)."""

    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        pointer = _element_pointer(context, builder, array_type, args[0], args[1], index_type)
        size = context.get_abi_sizeof(context.get_value_type(array_type.dtype))
        return builder.load_atomic(pointer, "acquire", size)

    return array.dtype(array, index), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(): let another thread run on this core (POSIX; resolved when loaded)."""

    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield"
        )
        builder.call(function, [])
        return context.get_dummy_value()

    return types.void(), codegen


@numba.njit(nogil=True, inline="always")
def arrive_and_wait(arrivals, threads, meeting):
    """Count this thread in at barrier number meeting (1, 2, ...) and wait for the others.

    arrivals[0]: arrivals so far; arrivals[1] != 0: a thread failed and will not come. Returns
    whether all came.
    """
    atomic_add(arrivals, 0, 1)
    spins = 0
    while atomic_read(arrivals, 0) < threads * meeting:
        if atomic_read(arrivals, 1) != 0:
            return False
        spins += 1
        if spins > _SPINS:
            yield_core()
    return True


# ---- tables: columns packed into the (N, D + 1) rows the SGD loops read ---------------------


_PACK_BLOCK = 2048  # source rows per block: one block's rows of every column stay in cache


@numba.njit(cache=True, nogil=True)
def pack_columns(columns, lo, hi, first, dest, train_rows, shift, out, sums, squares):
    """Write rows lo .. hi - 1 of a chunk of a table (its row first + i is the table's row) to
    out[dest[row]] as float32, each column less shift[j]. columns: a tuple of read-only arrays
    of one type, one per column, the target last (compiled once per column count). Adds the
    shifted values of training rows (dest < train_rows) and their squares to sums and squares
    (float64). Returns how many values were NaN or infinite. No GIL: threads take row ranges."""
    width = len(columns)
    bad = 0
    for start in range(lo, hi, _PACK_BLOCK):  # a block's rows of every column stay in cache
        stop = min(hi, start + _PACK_BLOCK)
        for j in range(width):
            column = columns[j]
            k = shift[j]
            s = 0.0
            q = 0.0
            for i in range(start, stop):
                v = np.float64(column[i]) - k
                row = dest[first + i]
                out[row, j] = v
                if not np.isfinite(v):
                    bad += 1
                elif row < train_rows:
                    s += v
                    q += v * v
            sums[j] += s
            squares[j] += q
    return bad


_WINDOW_BLOCK = 256  # source rows per block: their rows of the window (100 KB at D 100) stay in L2


@numba.njit(cache=True, nogil=True)
def pack_window(columns, lo, hi, dest, center, inverse, out):
    """A streamed window's rows: rows lo .. hi - 1 of a row group (columns: as pack_columns')
    to out[dest[i]] as float32, standardized as pack_columns then affine_columns would
    (float32(v - center[j]), then float32(that x inverse[j])), in one pass and without their
    sums and checks (the first pass made them): a window is packed every epoch."""
    width = len(columns)
    for start in range(lo, hi, _WINDOW_BLOCK):
        stop = min(hi, start + _WINDOW_BLOCK)
        for j in range(width):
            column = columns[j]
            k = center[j]
            s = inverse[j]
            for i in range(start, stop):
                v = np.float32(np.float64(column[i]) - k)
                out[dest[i], j] = np.float64(v) * s


@numba.njit(cache=True, nogil=True, parallel=True)
def affine_columns(out, offset, scale):
    """out[i, j] = (out[i, j] - offset[j]) * scale[j], in float64, stored back as float32."""
    n, width = out.shape
    for i in numba.prange(n):
        for j in range(width):
            out[i, j] = (np.float64(out[i, j]) - offset[j]) * scale[j]
