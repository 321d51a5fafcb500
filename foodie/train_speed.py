"""Speed pieces for training InternVL2 + LoRA (used by ``foodie.xtuner_model.FoodieInternVL`` behind switches); each
keeps the model's parameters, names and maths (docs/PERFORMANCE.md has the measurements).

* ``FusedLoraLinear``: PEFT's LoRA ``Linear`` whose update ``B(A(dropout(x))) * scaling`` accumulates into the frozen
  layer's output in one GEMM (``addmm``), not a GEMM, a scaling pass and an addition pass; saved weights as usual.
* ``checkpoint_layers``: activation checkpointing on the first ``n`` decoder layers only.
* ``compile_elementwise``: InternLM2's RMSNorm and SwiGLU through ``torch.compile`` (one fused kernel each),
  shape-dynamic so sequence lengths don't recompile.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear


class FusedLoraLinear(LoraLinear):
    """PEFT LoRA Linear; plain single-adapter LoRA takes the one-GEMM path, anything else PEFT's own."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1
                or self.active_adapters[0] not in self.lora_A
                or self.active_adapters[0] in getattr(self, "lora_variant", {})):
            return super().forward(x, *args, **kwargs)
        name = self.active_adapters[0]
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        result = self.base_layer(x)
        if lora_B.bias is not None or result.dtype != lora_A.weight.dtype or x.dtype != lora_A.weight.dtype:
            return super().forward(x)
        h = lora_A(self.lora_dropout[name](x))
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.weight.t(),
                          alpha=self.scaling[name])
        return out.view(result.shape)


def register_fused_lora(lora_config) -> None:
    """Make ``get_peft_model`` build ``FusedLoraLinear`` for every ``nn.Linear`` target."""
    lora_config._register_custom_module({torch.nn.Linear: FusedLoraLinear})


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def checkpoint_layers(layers, n: int) -> None:
    """Recompute the first ``n`` of ``layers`` in backward (non-reentrant checkpoint); keep the rest's activations.
    The caller switches the model's own all-layer checkpointing off."""
    for layer in list(layers)[:n]:
        layer.forward = _checkpointed(layer.forward)


def _rms_norm(x, weight, eps: float):  # as InternLM2RMSNorm: float32 statistics, cast back, then the weight
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _silu_mul(gate, up):
    return F.silu(gate) * up


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


def compile_elementwise(language_model) -> int:
    """Route every RMSNorm and SwiGLU MLP of an InternLM2 model through compiled kernels; returns how many."""
    count = 0
    norm, silu_mul = _compiled(_rms_norm), _compiled(_silu_mul)
    for module in language_model.modules():
        kind = type(module).__name__
        if kind == "InternLM2RMSNorm":
            module.forward = functools.partial(lambda m, x: norm(x, m.weight, m.variance_epsilon), module)
            count += 1
        elif kind == "InternLM2MLP":
            module.forward = functools.partial(lambda m, x: m.w2(silu_mul(m.w1(x), m.w3(x))), module)
            count += 1
    return count
