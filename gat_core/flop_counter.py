"""Measured FLOP/MAC counts with torch's FlopCounterMode, including CPU attention.

FlopCounterMode counts 2 FLOPs per multiply-accumulate for every matmul-like op
(mm, addmm, bmm, convolutions, fused attention) and their backward, and ignores
elementwise ops, norms and softmax.  In torch 2.14 it has no formula for the CPU
attention kernel (`aten._scaled_dot_product_flash_attention_for_cpu` and its
backward) and counts it as zero; `flop_counter()` adds those formulas with the
convention torch uses for the CUDA fused kernels:

- forward: QK^T and AV, two batched matmuls;
- backward: five batched matmuls (the fused kernels recompute QK^T, then dP, dV,
  dQ, dK), i.e. 2.5 x the forward.

The math backend (used on the meta device and whenever the fused kernels are not
selected) decomposes into bmm/softmax and is counted by torch's own formulas: two
bmm forward, four backward.

`count_macs(fn)` is what the analytic counts in `gat_core.flops` are checked
against (DiT convention: MACs = FlopCounterMode total / 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _bmm_flops(batch: int, n: int, k: int, m: int) -> int:
    return 2 * batch * n * k * m


def _attention_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d_q = query_shape
    _, h_kv, s_k, _ = key_shape
    d_v = value_shape[-1]
    if h % h_kv:
        raise ValueError(f"attention: {h} query heads are not a multiple of {h_kv} key/value heads")
    return _bmm_flops(b * h, s_q, d_q, s_k) + _bmm_flops(b * h, s_q, s_k, d_v)


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                              **kwargs) -> int:
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return (_bmm_flops(b * h, s_q, d_q, s_k)      # recompute QK^T
            + _bmm_flops(b * h, s_q, d_v, s_k)    # dP = dO V^T
            + _bmm_flops(b * h, s_k, s_q, d_v)    # dV = P^T dO
            + _bmm_flops(b * h, s_q, s_k, d_q)    # dQ = dS K
            + _bmm_flops(b * h, d_q, s_q, s_k))   # dK = dS^T Q


CPU_ATTENTION_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_forward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
}


def flop_counter(display: bool = False) -> FlopCounterMode:
    """A FlopCounterMode that also counts the CPU fused-attention kernel and its backward."""
    return FlopCounterMode(display=display, custom_mapping=dict(CPU_ATTENTION_FORMULAS))


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs (torch convention, 2 per MAC) of everything `fn(*args, **kwargs)` runs, backward included."""
    with flop_counter() as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Multiply-accumulates (DiT convention, 1 per MAC) of everything `fn(*args, **kwargs)` runs."""
    return count_flops(fn, *args, **kwargs) // 2
