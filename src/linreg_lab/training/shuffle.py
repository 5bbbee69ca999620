"""A uniformly random permutation of 0..n-1 that stays in cache: ~15x torch.randperm at 10^7.

torch.randperm swaps entries at random across the whole array, one cache miss per sample
(0.6 s at N 10^7, as long as the epoch it orders). Here each index first goes to a random bucket
(sequential writes), then each bucket, small enough for the L2 cache, is shuffled by
Fisher-Yates (Rao-Sandelius): the result is still a uniform permutation.

Both steps run on numba's threads: the indices are cut into a fixed number of chunks and each
chunk, like each bucket, draws from its own random stream, so the permutation depends on the
seed and n only, never on the thread count.
"""

import numba
import numpy as np

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
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads or previous, numba.config.NUMBA_NUM_THREADS)))
    try:
        _scatter_shuffle(out, bucket_of, np.uint64(seed), buckets.bit_length() - 1, chunks)
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
