"""onnxsim, kept from emitting ops of a non-standard domain that no NCNN converter reads."""

from __future__ import annotations

from deploykit.errors import ConfigError, StageError
from deploykit.onnx_io import nonstandard_nodes, save_onnx
from deploykit.stages.context import RunContext

# These onnxsim fusions write com.microsoft::Attention and ::GroupQueryAttention; they are on
# by default in onnxsim 0.8, so they are always skipped here.
ALWAYS_SKIPPED = ("fuse_attention", "fuse_gqa")
# Skipped for one converter only. fuse_matmul_add_bias_into_gemm_batched turns MatMul(x[1,S,K], W) + b
# into Reshape([S,K]) -> Gemm -> Reshape, and onnx2ncnn writes a Reshape without its shape[0] (the
# batch axis), so the Gemm would get the wrong matrix; the MatMul + Add is what onnx2ncnn maps
# (InnerProduct and a BinaryOp). Pass gemm_to_matmul undoes the fusion in models imported simplified.
# For pnnx, both fusions hide the attention: fuse_qkv merges the q/k/v MatMuls into one MatMul +
# Split, and the Gemm form above replaces the Linear layers pnnx looks for, so pnnx no longer
# writes ncnn's MultiHeadAttention (48 layers instead of 22 in a ViT block, 1.09x slower on ncnn;
# scripts/README.md). Skipping them leaves the graph as the exporter wrote those parts. Likewise
# fuse_preceding_mul_into_conv folds the `* 0.5` of a GELU into the next Conv's weights, and pnnx
# then writes that GELU as Div/Erf/Add/Mul instead of one GELU layer (Whisper's encoder).
SKIPPED_FOR_CONVERTER = {"onnx2ncnn": ("fuse_matmul_add_bias_into_gemm_batched",),
                         "pnnx": ("fuse_qkv", "fuse_matmul_add_bias_into_gemm_batched",
                                  "fuse_preceding_mul_into_conv")}


def known_optimizers() -> set[str]:
    """Every optimizer name onnxsim knows, including its own passes that its CLI does not list."""
    try:
        from onnxsim import onnxsim_cpp2py_export as core

        return set(core._list_other_optimizers()) | set(core._list_optimizers())
    except (ImportError, AttributeError):
        return set()


def simplify(ctx: RunContext) -> None:
    settings = ctx.config.simplify
    if not settings.enabled:
        ctx.record.status = "skipped"
        return
    import onnxsim

    known = known_optimizers()
    unknown = [name for name in settings.skip_optimizers if known and name not in known]
    if unknown:
        raise ConfigError(f"simplify.skip_optimizers: onnxsim has no optimizer named {', '.join(map(repr, unknown))}.",
                          stage="simplify", hint="`onnxsim --list-default-optimizers` shows the names.")
    for_converter = SKIPPED_FOR_CONVERTER.get(ctx.config.converter.name, ())
    skipped = list(dict.fromkeys([*ALWAYS_SKIPPED, *for_converter, *settings.skip_optimizers]))
    before = {(n.domain, n.op_type) for n in nonstandard_nodes(ctx.model)}
    try:
        simplified, ok = onnxsim.simplify(ctx.model, skipped_optimizers=skipped)
    except Exception as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])[:800]
        raise StageError(f"onnxsim failed on {ctx.model_file.name}: {type(exc).__name__}: {first}", stage="simplify",
                         hint="set simplify.enabled: false to go on without it, or add the optimizer named "
                              "in the message to simplify.skip_optimizers.") from None
    if not ok:
        raise StageError("onnxsim's own check says the simplified model differs from its input.", stage="simplify",
                         hint="set simplify.enabled: false, or skip optimizers one by one in simplify.skip_optimizers.")
    added = [n for n in nonstandard_nodes(simplified) if (n.domain, n.op_type) not in before]
    if added:
        listed = ", ".join(f"{n.domain}::{n.op_type} ({n.name or 'unnamed'})" for n in added[:5])
        raise StageError(f"onnxsim fused parts of the graph into ops of a non-standard domain that no NCNN "
                         f"converter reads: {listed}.", stage="simplify",
                         hint="add the fusion that made them to simplify.skip_optimizers, or set simplify.enabled: false.")
    ctx.record.details["skipped_optimizers"] = skipped
    path = save_onnx(ctx.artifacts, "01_simplify.onnx", simplified)
    ctx.set_model(simplified, path)
