"""Where the threads of one compiled loop meet after each batch: atomics and a spin-wait.

numba has no atomics of its own; these are LLVM's, so the compiler neither keeps a spun-on value
in a register nor moves the threads' other reads and writes across them. A waiting thread spins
a few microseconds (the usual wait: the others are running), then yields its core: with more
threads than free cores (a parallel sweep, trainer.threads above the core count) a spinning
thread would hold the core the thread it waits for needs, ~100x slower.

numba's on-disk cache keys on the calling kernel's file only: after editing this one, touch
sgd_kernels.py so that its cached machine code is rebuilt.
"""

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

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
