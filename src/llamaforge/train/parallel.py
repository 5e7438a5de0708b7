"""`parallelize()`: PyTorch's own parallelism, applied to an unchanged `Transformer` from outside.

The order is torchtitan's, and each step relies on the one before:
1. tensor parallel + sequence parallel (Megatron-style, Korthikanti et al. 2022, as the paper cites) on the "tp"
   axis of a 2-D device mesh ("dp_shard", "tp"): q/k/v and w1/w3 split by output columns, wo and w2 by input rows,
   so each block needs one all-gather in and one reduce-scatter out per sub-layer; between them the residual
   stream and the RMSNorms stay split along the sequence (SequenceParallel), so no rank holds the whole activation;
2. activation checkpointing per block (full: recompute the block; selective: keep matmul and attention outputs,
   recompute the cheap element-wise ops, the paper's "save the expensive activations");
3. torch.compile per block (one compiled graph reused by every layer);
4. FSDP2 (`fully_shard`) on the "dp_shard" axis, per block then the root, so one block's parameters are gathered
   at a time; on GPU with bf16 it also casts parameters to bf16 for compute while keeping fp32 master weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from llamaforge.errors import UserError
from llamaforge.model import Transformer
from llamaforge.train.config import TrainConfig


def mesh_shape(world_size: int, dp_shard: int, tp: int) -> tuple[int, int]:
    """(dp_shard, tp) degrees; dp_shard = -1 takes every process tensor parallelism leaves."""
    if tp < 1 or world_size % tp:
        raise UserError(f"parallel.tp: {tp} does not divide the {world_size} processes")
    if dp_shard == -1:
        dp_shard = world_size // tp
    if dp_shard * tp != world_size:
        raise UserError(f"parallel: dp_shard x tp = {dp_shard} x {tp} != {world_size} processes")
    return dp_shard, tp


def build_mesh(device_type: str, dp_shard: int, tp: int) -> DeviceMesh:
    """A 2-D device mesh (dp_shard, tp) over all processes; tp is the inner dimension (tensor-parallel ranks are
    neighbours).
    """
    return init_device_mesh(device_type, (dp_shard, tp), mesh_dim_names=("dp_shard", "tp"))


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh) -> None:
    """Tensor + sequence parallelism over `tp_mesh` (Megatron-LM's layout, torchtitan's plan): wq/wk/wv and
    w1/w3 column-parallel, wo/w2 row-parallel with a reduce-scatter along the sequence, the norms sequence-parallel,
    the output projection gathering full logits on every rank. Each rank holds n_heads / tp heads, so tp must
    divide n_heads and n_kv_heads. Tied embeddings (Llama 3.2) are refused: one matrix cannot be split by rows
    for the embedding and by columns for the output projection.
    """
    if model.args.tie_embeddings:
        raise UserError("parallel.tp: tensor parallelism with tied embeddings (Llama 3.2 1B/3B) is not supported; "
                        "expected tp = 1 (FSDP alone)")
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    # Outside the blocks: embedding output leaves split along the sequence (dim 1); the final norm works on
    # that split; the output projection gathers the sequence and returns full logits on every rank.
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    })
    for block in model.layers:
        parallelize_module(block, tp_mesh, {
            "attention_norm": SequenceParallel(),
            # the block calls attention(x, cos, sin, input_pos): only x changes layout (gathered)
            "attention": PrepareModuleInput(
                input_layouts=(Shard(1), None, None, None),
                desired_input_layouts=(Replicate(), None, None, None),
            ),
            "attention.wq": ColwiseParallel(),  # each rank computes its share of the heads (model.py views -1 heads)
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),  # partial sums -> reduce-scatter on sequence
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        })


def _selective_policy():
    """Keep the outputs of matmuls and attention (expensive to recompute); recompute everything else."""
    from torch.utils.checkpoint import (
        CheckpointPolicy,
        create_selective_checkpoint_contexts,
    )

    aten = torch.ops.aten
    save = {aten.mm.default, aten.addmm.default, aten.bmm.default,
            aten._scaled_dot_product_efficient_attention.default,
            aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default}
    cudnn = getattr(aten, "_scaled_dot_product_cudnn_attention", None)
    if cudnn is not None:
        save.add(cudnn.default)

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return lambda: create_selective_checkpoint_contexts(policy)


def apply_activation_checkpointing(model: Transformer, mode: str) -> None:
    """Wrap every block for activation checkpointing: "full" recomputes the whole block in backward, "selective"
    keeps matmul and attention outputs and recomputes the rest (cheap element-wise ops); "none" leaves the model
    as is.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        checkpoint_wrapper,
    )

    for i, block in enumerate(model.layers):
        if mode == "full":
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
        elif mode == "selective":
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False, context_fn=_selective_policy())


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, param_dtype: torch.dtype) -> None:
    """FSDP2 (`fully_shard`) over `dp_mesh`: one unit per block plus the root, parameters cast to `param_dtype`
    for compute and gradients reduced in fp32; the last block stays gathered after forward (backward needs it first).
    """
    from torch.distributed.fsdp import (  # public path since torch 2.6
        MixedPrecisionPolicy,
        fully_shard,
    )

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)  # reduce grads in fp32
    for i, block in enumerate(model.layers):
        # the last block's parameters are needed again right away by backward: keep them gathered
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=i < len(model.layers) - 1)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp)


def parallelize(model: Transformer, mesh: DeviceMesh | None, cfg: TrainConfig, param_dtype=torch.float32) -> nn.Module:
    """Apply TP+SP -> activation checkpointing -> per-block compile -> FSDP2, each when configured.

    `mesh` is the 2-D ("dp_shard", "tp") mesh, or None for one process. Returns the same module, changed in place.
    """
    args = model.args
    if mesh is not None and mesh["tp"].size() > 1:
        tp = mesh["tp"].size()
        for name, n in (("n_heads", args.n_heads), ("n_kv_heads", args.n_kv_heads),
                        ("ffn hidden size", args.ffn_hidden_dim), ("vocab_size", args.vocab_size)):
            if n % tp:
                raise UserError(f"parallel.tp: {name} {n} is not divisible by tp {tp}")
        if cfg.data.seq_len % tp:  # sequence parallel splits every sequence evenly across the tp ranks
            raise UserError(f"parallel.tp: data.seq_len {cfg.data.seq_len} is not divisible by tp {tp}")
        apply_tensor_parallel(model, mesh["tp"])
    if cfg.training.activation_checkpointing != "none":
        apply_activation_checkpointing(model, cfg.training.activation_checkpointing)
    if cfg.training.compile:
        for block in model.layers:
            block.compile(fullgraph=True)  # in place: parameter names stay unchanged
    if mesh is not None and mesh["dp_shard"].size() > 1:
        apply_fsdp(model, mesh["dp_shard"], param_dtype)
    return model
