"""Atomic integer reads and adds for numba kernels: how threads of one loop meet at a barrier.

numba has no atomics of its own; these are LLVM's, so the compiler neither caches a spun-on
value in a register nor moves the threads' other reads and writes across them.
"""

from numba.core import cgutils, types
from numba.extending import intrinsic


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
