"""InternViT, the vision transformer of InternVL (InternViT-300M-448px in InternVL2-2B).

A plain pre-norm ViT: patch embedding + class token + learned positions, then layers of
x = x + ls1 * attn(norm1(x)) and x = x + ls2 * mlp(norm2(x)), where ls1/ls2 are learned layer scales.
Parameter names match the published checkpoints.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import resolve_attn_implementation


class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


NORM2FN = {'rms_norm': InternRMSNorm, 'layer_norm': nn.LayerNorm}


class DropPath(nn.Module):
    """Stochastic depth: during training drop the whole residual branch of a sample with probability p."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(3, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        num_positions = (self.image_size // self.patch_size) ** 2 + 1  # the class token's, then the patches'
        self.position_embedding = nn.Parameter(torch.randn(1, num_positions, self.embed_dim))

    def _get_pos_embed(self, pos_embed, H, W):
        """Positions learned on a grid x grid of patches, resized (bicubic) to an H x W grid."""
        grid = self.image_size // self.patch_size
        if (H, W) == (grid, grid):
            return pos_embed
        dtype = pos_embed.dtype
        pos_embed = pos_embed.float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        pos_embed = F.interpolate(pos_embed, size=(H, W), mode='bicubic', align_corners=False)
        return pos_embed.reshape(1, -1, H * W).permute(0, 2, 1).to(dtype)

    def forward(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(dtype))  # [B, D, H, W]
        B, _, H, W = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(B, 1, -1).to(dtype)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        position_embedding = torch.cat([self.position_embedding[:, :1, :],
                                        self._get_pos_embed(self.position_embedding[:, 1:, :], H, W)], dim=1)
        return embeddings + position_embedding.to(dtype)


class InternAttention(nn.Module):
    """Bidirectional multi-head self-attention with one packed qkv projection."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f'hidden_size ({self.embed_dim}) must be divisible by '
                             f'num_attention_heads ({self.num_heads})')
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.attn_drop = nn.Dropout(config.attention_dropout)
        self.proj_drop = nn.Dropout(config.dropout)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, hd]
        if self.qk_normalization:  # RMSNorm over all heads together
            q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(B, N, H, hd).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(B, N, H, hd).transpose(1, 2)
        if (self.config.attn_implementation or 'eager') == 'eager':
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = self.attn_drop(attn) @ v
        else:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class InternMLP(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config: InternVisionConfig, drop_path_rate: float):
        super().__init__()
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = NORM2FN[config.norm_type](config.hidden_size, eps=config.layer_norm_eps)
        self.norm2 = NORM2FN[config.norm_type](config.hidden_size, eps=config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.drop_path1 = DropPath(drop_path_rate)
        self.drop_path2 = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)) * self.ls1)
        x = x + self.drop_path2(self.mlp(self.norm2(x)) * self.ls2)
        return x


class InternVisionEncoder(nn.Module):
    def __init__(self, config: InternVisionConfig):
        super().__init__()
        rates = [r.item() for r in torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device='cpu')]
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config, r) for r in rates])
        self.gradient_checkpointing = True  # as the official code: recompute layers in training

    def forward(self, hidden_states, output_hidden_states=False):
        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = torch.utils.checkpoint.checkpoint(layer, hidden_states, use_reentrant=False)
            else:
                hidden_states = layer(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class InternVisionModel(PreTrainedModel):
    main_input_name = 'pixel_values'
    config_class = InternVisionConfig
    _no_split_modules = ['InternVisionEncoderLayer']

    def __init__(self, config: InternVisionConfig):
        super().__init__(config)
        if config.attn_implementation is None:
            config.attn_implementation = 'flash_attention_2' if config.use_flash_attn else 'eager'
        config.attn_implementation = resolve_attn_implementation(config.attn_implementation)
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, pixel_values, output_hidden_states=None, return_dict=None):
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if pixel_values.ndim != 4:
            raise ValueError(f'pixel_values must be [tiles, 3, height, width], got shape {tuple(pixel_values.shape)}')
        encoder_outputs = self.encoder(self.embeddings(pixel_values), output_hidden_states=bool(output_hidden_states))
        last_hidden_state = encoder_outputs.last_hidden_state
        outputs = BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=last_hidden_state[:, 0],
                                             hidden_states=encoder_outputs.hidden_states)
        return outputs if return_dict else outputs.to_tuple()
