"""The built-in rewrite passes, one per module; importing this package registers them all.

AUTO is the order `passes: auto` runs them in, filtered by each pass's `targets` for the
configured converter. A plugin pass runs where the config's list names it.
"""

import importlib
import pkgutil

AUTO = [
    "uniform_gather_elements", # before fold_shapes, which folds the lookup by the constant it leaves
    "fold_shapes",             # first: the passes below read shapes, repeats and indices only from constants
    "pnnx_embed",              # pnnx: the axis-free Gather it writes is what pnnx makes an Embed
    "id_mask_lookup",          # before the mask passes: they take its float 0/1 lookup, not integer ids
    "where_to_arithmetic",     # the masks (of id_mask_lookup or the model) become arithmetic ...
    "compare_to_arithmetic",   # ... where used as a number
    "index_arithmetic",        # after id_mask_lookup, whose 0/1 lookup it counts while its table is still a
                               # constant (before embed_layer takes it out); before embedding_gather, which
                               # takes the lookups by graph ids and leaves computed ones to it
    "embed_layer",             # onnx2ncnn: after id_mask_lookup and the mask passes, whose tables it also takes
                               # out as Embed layers; before embedding_gather, which takes the lookups it refuses
    "embedding_gather",        # after the mask passes: they read a Gather from a 0/1 table as whole
                               # numbers, but not the one-hot product it becomes
    "integer_pow",             # reads only its Pow: anywhere before the onnx2ncnn forms below
    "pow_square",              # onnx2ncnn, beside integer_pow: before decompose_layernorm writes the Pows
                               # onnx2ncnn fuses, which it leaves alone
    "argmax_arithmetic",       # likewise, its ArgMax/ArgMin
    "interleave_slices",       # before strided_slice, which would take its Slices apart
    "gather_to_slice",         # after the table lookups above, which take the Gathers from constants
    "strided_slice",
    "dilated_conv_center",     # reads only its Conv
    "expand_broadcast",        # after fold_shapes: reads static shapes and constant repeats
    "batch_axis_reshape",      # after the slicing passes, which leave >4-D data to it
    "attention_bias",          # pnnx: after the passes above, which write the attention's final form
    "token_batchnorm",         # pnnx: reads only a BatchNormalization and the Reshapes after it
    "reduce_axes_input",       # pnnx: reads only its ReduceSum/ReduceMean
    "instance_norm_1d",        # pnnx: reads only its InstanceNormalization
    "legacy_axes_attributes",  # onnx2ncnn: from here on the forms only onnx2ncnn needs, which no pass above reads
    "positive_axes",           # after legacy_axes_attributes: the Splits it keeps still have negative axes
    "decompose_layernorm",
    "gemm_to_matmul",          # before scalar_constants, which would normalise the Gem it reads
    "batched_matmul_2d",       # in no auto (the converter writes ncnn's MatMul); after gemm_to_matmul when named
    "drop_identity",           # late: removes the Identity a rewrite above may write before a graph output
    "scalar_constants",        # after the passes above that write one-element constants
    "erf_polynomial",          # in no auto (onnx2ncnn 20250916 maps Erf); its constants are 0-D already
    "broadcast_rank",          # onnx2ncnn: after the passes that write binary ops (the masks, scalar_constants)
    "resize_empty_inputs",     # reads only its Resize: anywhere
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
