"""Software prefetch for numba kernels: start loading a row that a loop will reach soon.

Shuffled minibatches read rows of X in random order, so each row costs a full memory latency;
asking for the row a few samples ahead keeps several loads in flight (~2-3x at N >= 10^6).
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

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
