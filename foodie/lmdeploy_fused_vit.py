"""InternViT for LMDeploy's PyTorch engine with two elementwise passes fewer per layer (issue 22).

LMDeploy 0.9's ``InternVisionEncoderLayer`` (lmdeploy/pytorch/models/internvl.py) computes

    h = h + proj(attn(norm1(h))) * ls1
    h = h + fc2(gelu(fc1(norm2(h)))) * ls2

On an H200 its vision encoder's GELU and layer-scale multiplies are 7% of a 13-tile question's kernel time
(docs/PERFORMANCE.md, session 7: 86 + 81 of 2,270 ms for 48 questions). Here

* each layer scale folds into the rows of the linear layer before it, once, after loading:
  ``(x W^T + b) * ls = x (diag(ls) W)^T + ls * b``;
* GELU runs in the epilogue of the fc1 product (``torch._addmm_activation``; on CUDA cuBLASLt's GELU, the tanh
  form, within 5e-4 of the exact GELU InternViT names: 0.03 of a bfloat16 step where it is largest).

Same weights and layout; only rounding differs. ``use_fused_vit()`` puts the model class in LMDeploy's own
``CUSTOM_MODULE_MAP`` before an engine is built in this process (``PytorchEngineConfig.custom_module_map`` does not
reach the model agent in LMDeploy 0.9.2: the agent reads ``ModelConfig.custom_module_map``, which nothing sets).
Needs LMDeploy: import this module only where it is installed.
"""
from __future__ import annotations

import copy

import torch
from lmdeploy.pytorch.models.internvl import InternVisionEncoderLayer, InternVLChatModel


def fold_layer_scale(linear, scale: torch.Tensor) -> None:
    """``linear(x) * scale`` becomes ``linear(x)``: the product done once in float32 at least, then rounded."""
    wide = torch.promote_types(linear.weight.dtype, torch.float32)
    with torch.no_grad():
        linear.weight.copy_(linear.weight.to(wide) * scale.to(wide)[:, None])
        if linear.bias is not None:
            linear.bias.copy_(linear.bias.to(wide) * scale.to(wide))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x W^T + b)`` as one product (CUDA: cuBLASLt's bias+GELU epilogue, tanh form; CPU: exact GELU)."""
    flat = x.reshape(-1, x.shape[-1])
    return torch._addmm_activation(bias, flat, weight.t(), use_gelu=True).view(*x.shape[:-1], weight.shape[0])


class FusedInternVisionEncoderLayer(InternVisionEncoderLayer):
    """The stock layer's parameters and names; layer scales folded at load, GELU in the fc1 product."""

    def update_weights(self) -> None:  # LMDeploy calls it once every weight is loaded (load_model_weights)
        fold_layer_scale(self.attn.proj, self.ls1)
        fold_layer_scale(self.mlp.fc2, self.ls2)
        with torch.no_grad():  # folded: the parameters now say so (a second call changes nothing)
            self.ls1.fill_(1)
            self.ls2.fill_(1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = hidden_states + self.attn(self.norm1(hidden_states))
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        return h + fc2(linear_gelu(self.norm2(h), fc1.weight, fc1.bias))


def fuse_layers(module: torch.nn.Module) -> None:
    """Every LMDeploy InternViT layer inside ``module`` becomes a ``FusedInternVisionEncoderLayer`` in place (a
    subclass adding methods only: same state); its layer scales fold when ``update_weights`` runs."""
    for m in module.modules():
        if type(m) is InternVisionEncoderLayer:
            m.__class__ = FusedInternVisionEncoderLayer


def fused_copy(loaded: torch.nn.Module) -> torch.nn.Module:
    """A fused copy of InternViT layers whose weights are already loaded (LMDeploy's loader is not involved)."""
    fused = copy.deepcopy(loaded)
    fuse_layers(fused)
    for m in fused.modules():
        if isinstance(m, FusedInternVisionEncoderLayer):
            m.update_weights()
    return fused


def fusable(vision_config) -> bool:
    """The layers this fuses: exact GELU, for which the tanh form stands in (fc1 must carry no LoRA adapter:
    ``LMDeployBackend`` loads none)."""
    return getattr(vision_config, "hidden_act", None) == "gelu"


class InternVLChatModelFusedViT(InternVLChatModel):
    """LMDeploy's InternVL2 model with ``FusedInternVisionEncoderLayer`` in its vision encoder, where ``fusable``."""

    def __init__(self, config, ctx_mgr, dtype: torch.dtype = None, device: torch.device = None):
        super().__init__(config, ctx_mgr, dtype=dtype, device=device)
        if fusable(config.vision_config):  # (Mono-InternVL's patch encoder and a disabled one have no such layers)
            fuse_layers(self.vision_model)


def use_fused_vit(enabled: bool = True) -> None:
    """Engines built in this process from now on use ``InternVLChatModelFusedViT`` for InternVL checkpoints
    (``enabled=False``: LMDeploy's own model again)."""
    from lmdeploy.pytorch.models.module_map import CUSTOM_MODULE_MAP
    if enabled:
        CUSTOM_MODULE_MAP["InternVLChatModel"] = f"{__name__}.{InternVLChatModelFusedViT.__name__}"
    else:
        CUSTOM_MODULE_MAP.pop("InternVLChatModel", None)
