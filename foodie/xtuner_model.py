"""XTuner's InternVL training model, run on CPU (single process) and GPU, and fast.

``xtuner.model.InternVL_V1_5`` (XTuner 0.2.0) forces flash-attn and bf16 and calls ``torch.distributed.get_rank()``
(which raises without a process group). ``FoodieInternVL`` subclasses it, so XTuner's LoRA preparation, freezing
and saved state dict (LoRA + ``mlp1``) apply unchanged, and replaces loading (dtype, attention and the code that
runs the weights, chosen for the device) and the forward pass (speed switches, docs/PERFORMANCE.md).
"""
from __future__ import annotations

import importlib.util
import logging

import torch
from mmengine import print_log
from mmengine.dist import get_rank
from mmengine.model import BaseModel
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.modeling_outputs import CausalLMOutputWithPast
from xtuner.model import InternVL_V1_5
from xtuner.model.utils import guess_load_checkpoint

from foodie.model_spec import IMG_CONTEXT
from foodie.sdpa_attention import use_sdpa
from foodie.train_speed import checkpoint_layers, register_fused_lora
from foodie.train_speed import compile_elementwise as compile_elementwise_fn


def resolve_dtype(torch_dtype: str | torch.dtype = "auto") -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that supports it, float16 on older GPUs, float32 on CPU."""
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype != "auto":
        return getattr(torch, torch_dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_attn_implementation(attn_implementation: str = "auto") -> str:
    """``"auto"``: flash_attention_2 on a GPU with flash-attn installed, else sdpa."""
    has_flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if attn_implementation == "auto":
        return "flash_attention_2" if has_flash else "sdpa"
    if attn_implementation not in ("eager", "sdpa") and not (attn_implementation == "flash_attention_2" and has_flash):
        raise ValueError(f"attn_implementation={attn_implementation!r}: choose one of auto, eager, sdpa "
                         "(flash_attention_2 needs flash-attn and a GPU); set it in the config's model dict")
    return attn_implementation


def load_internvl(model_path, dtype: torch.dtype, attn_implementation: str = "auto"):
    """(model, attention): the InternVL2 model run by the checkpoint's own remote code; ``"sdpa"`` swaps its eager
    attention for SDPA on the loaded model (``foodie.sdpa_attention.use_sdpa``: same parameters, same logits)."""
    attn = resolve_attn_implementation(attn_implementation)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=True)
    config.llm_config.attn_implementation = "flash_attention_2" if attn == "flash_attention_2" else "eager"
    config.vision_config.use_flash_attn = attn == "flash_attention_2"
    model = AutoModel.from_pretrained(model_path, config=config, torch_dtype=dtype, trust_remote_code=True,
                                      use_flash_attn=attn == "flash_attention_2")
    if attn == "sdpa" and not use_sdpa(model):  # no InternLM2 attention to swap
        attn = "eager"
    return model, attn


class FoodieInternVL(InternVL_V1_5):
    """InternVL2 + LoRA for ``xtuner train`` on CPU and GPU (DeepSpeed or not).

    Args mirror ``InternVL_V1_5`` minus quantization, plus ``torch_dtype``/``attn_implementation`` (``"auto"``:
    what the device and the code support), and switches that compute the same loss as XTuner's class:

    * ``loss_on_labels_only``: output head and cross-entropy only where a label exists (a few dozen of ~3,500);
    * ``frozen_vit_without_grad``: a frozen InternViT runs under ``torch.no_grad`` (``mlp1`` still trains);
    * ``causal_mask_for_right_padding``: XTuner pads on the right, so under causal attention no real token sees
      a pad; dropping the padding mask lets SDPA use its fused causal kernel;
    * ``fused_lora``: each LoRA update accumulates into the frozen layer's output in one GEMM;
    * ``compile_elementwise``: RMSNorm and SwiGLU through ``torch.compile`` (``"auto"``: on CUDA only);
    * ``activation_checkpointing``: True (every LLM layer), False, or how many of the first layers; a number
      becomes every layer under eager attention (its [B, heads, T, T] scores would not fit the budget);
    """

    def __init__(self, model_path, freeze_llm=True, freeze_visual_encoder=True, llm_lora=None,
                 visual_encoder_lora=None, pretrained_pth=None, torch_dtype="auto",
                 attn_implementation="auto", activation_checkpointing=True,
                 loss_on_labels_only=True, frozen_vit_without_grad=True, causal_mask_for_right_padding=True,
                 fused_lora=True, compile_elementwise="auto"):
        BaseModel.__init__(self)
        # Speed switches (docs/PERFORMANCE.md measures each); none changes the loss beyond rounding.
        self.fused_lora = fused_lora
        self.loss_on_labels_only = loss_on_labels_only
        self.frozen_vit_without_grad = frozen_vit_without_grad
        self.causal_mask_for_right_padding = causal_mask_for_right_padding
        print_log(f"Loading InternVL2 from {model_path}", logger="current")
        self.freeze_llm = freeze_llm
        self.freeze_visual_encoder = freeze_visual_encoder
        self.use_llm_lora = llm_lora is not None
        self.use_visual_encoder_lora = visual_encoder_lora is not None
        self.quantization_vit = self.quantization_llm = False

        dtype = resolve_dtype(torch_dtype)
        self.model, attn = load_internvl(model_path, dtype, attn_implementation)
        print_log(f"InternVL2 loaded: dtype={dtype}, attention={attn}", logger="current")
        if attn == "eager" and not isinstance(activation_checkpointing, bool) and activation_checkpointing:
            # A partial count is sized for fast attention; eager keeps [B, heads, T, T] score tensors per layer.
            print_log(f"eager attention: activation checkpointing on all LLM layers, not {activation_checkpointing}",
                      logger="current", level=logging.WARNING)
            activation_checkpointing = True

        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
        self.model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)

        if freeze_llm:
            self.model.language_model.requires_grad_(False)
        if freeze_visual_encoder:
            self.model.vision_model.requires_grad_(False)
        self.model.language_model.enable_input_require_grads()

        self.gradient_checkpointing_enable()
        if self.use_llm_lora:
            self._prepare_llm_for_lora(llm_lora)  # XTuner's: every LLM linear layer when targets are None
        if self.use_visual_encoder_lora:
            self._prepare_visual_encoder_for_lora(visual_encoder_lora)
        if activation_checkpointing is not True:  # LoRA preparation switched it on for every layer
            self.gradient_checkpointing_disable()
            if activation_checkpointing:  # a number of layers
                checkpoint_layers(self._llm_layers(), int(activation_checkpointing))
        if compile_elementwise == "auto":
            compile_elementwise = torch.cuda.is_available()
        if compile_elementwise:
            n = compile_elementwise_fn(self.model.language_model)
            print_log(f"compiled RMSNorm/SwiGLU in {n} modules", logger="current")

        if pretrained_pth is not None:
            self.load_state_dict(guess_load_checkpoint(pretrained_pth), strict=False)
            print_log(f"Loaded pretrained weights from {pretrained_pth}", logger="current")

        self._count = 0
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        print_log(f"FoodieInternVL ready: {trainable:,} trainable of {total:,} parameters",
                  logger="current")

    def _prepare_llm_for_lora(self, lora_config, use_activation_checkpointing=True):
        lora_config = self._parse_lora_config(lora_config)
        if self.fused_lora:
            register_fused_lora(lora_config)
        super()._prepare_llm_for_lora(lora_config, use_activation_checkpointing)

    def _llm_layers(self):
        lm = self.model.language_model
        causal_lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        return causal_lm.model.layers

    def _image_features(self, pixel_values):
        """[tiles, 3, H, W] -> [tiles, 256, llm_hidden] (the model's ``extract_feature``), with the frozen
        InternViT under ``no_grad`` when ``frozen_vit_without_grad`` applies."""
        m = self.model
        vit_trainable = any(p.requires_grad for p in m.vision_model.parameters())
        if not self.frozen_vit_without_grad or vit_trainable:
            return m.extract_feature(pixel_values)
        with torch.no_grad():
            out = m.vision_model(pixel_values=pixel_values, output_hidden_states=m.select_layer != -1,
                                 return_dict=True)
            h = out.last_hidden_state if m.select_layer == -1 else out.hidden_states[m.select_layer]
            h = h[:, 1:, :]  # drop the class token
            side = int(h.shape[1] ** 0.5)
            h = m.pixel_shuffle(h.reshape(h.shape[0], side, side, -1), scale_factor=m.downsample_ratio)
            h = h.reshape(h.shape[0], -1, h.shape[-1])
        return m.mlp1(h)

    def _llm_forward(self, pixel_values, input_ids=None, attention_mask=None, position_ids=None,
                     image_flags=None, past_key_values=None, labels=None, use_cache=None,
                     output_attentions=None, output_hidden_states=None, return_dict=None):
        """Image features replace the ``<IMG_CONTEXT>`` embeddings; next-token loss on ``labels``.

        Every index that needs the GPU's answer (image-token slots, real tiles, labelled positions, padding)
        is read before the vision encoder is launched, while the GPU queue is still empty: a boolean index
        after it would make the CPU wait for the whole InternViT before launching the LLM."""
        B, N = input_ids.shape
        slots = (input_ids.reshape(-1) == self.model.img_context_token_id).nonzero().squeeze(1)
        real_tiles = image_flags.reshape(-1).nonzero().squeeze(1)
        if (self.causal_mask_for_right_padding and attention_mask is not None and past_key_values is None
                and is_right_padded(attention_mask)):
            attention_mask = None
        fast_loss = self.loss_on_labels_only and labels is not None and not output_hidden_states \
            and not output_attentions
        if fast_loss:  # flat positions whose next token has a label
            has_target = torch.zeros_like(labels, dtype=torch.bool)
            has_target[:, :-1] = labels[:, 1:] != -100
            labelled = has_target.reshape(-1).nonzero().squeeze(1)
        if get_rank() == 0 and self._count % 100 == 0:
            print_log(f"tiles in batch: {pixel_values.shape[0]}, per sample: "
                      f"{pixel_values.shape[0] / B:.1f}, tokens per sample: {N}", logger="current")
        self._count += 1

        embeds = self.model.language_model.get_input_embeddings()(input_ids)
        C = embeds.shape[-1]
        vit_embeds = self._image_features(pixel_values).index_select(0, real_tiles).reshape(-1, C)
        if slots.numel() != vit_embeds.shape[0]:
            # max_length cut a sample inside its image tokens: fill the slots that remain.
            print_log(f"{slots.numel()} image-token slots for {vit_embeds.shape[0]} image features "
                      f"(sample truncated at max_length?)", logger="current", level=logging.WARNING)
            vit_embeds = vit_embeds[:slots.numel()]
        embeds = embeds.reshape(B * N, C).index_copy(0, slots, vit_embeds.to(embeds.dtype)).reshape(B, N, C)

        if fast_loss:
            return self._loss_on_labels(embeds, attention_mask, position_ids, labels, labelled)
        outputs = self.model.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True)
        logits = outputs.logits
        loss = None
        if labels is not None:
            vocab = self.model.language_model.config.vocab_size
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def _loss_on_labels(self, embeds, attention_mask, position_ids, labels, labelled):
        """The same mean next-token cross-entropy, with the output head applied only at the flat positions
        ``labelled`` (those whose next token has a label). ``logits`` in the result are theirs, [n, vocab]."""
        lm = self.model.language_model
        causal_lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # LoRA layers sit inside
        hidden = causal_lm.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False, return_dict=True).last_hidden_state
        if labelled.numel() == 0:  # nothing to learn in this batch: a zero loss that still reaches every graph
            return CausalLMOutputWithPast(loss=hidden.sum() * 0.0, logits=hidden.new_zeros(0, 0))
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, labelled)
        logits = causal_lm.get_output_embeddings()(hidden).float()
        targets = labels.reshape(-1).to(logits.device).index_select(0, labelled + 1)
        return CausalLMOutputWithPast(loss=torch.nn.functional.cross_entropy(logits, targets), logits=logits)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row of a [B, T] 0/1 mask is ones then zeros (XTuner's collate pads on the right)."""
    mask = attention_mask.bool()
    lengths = mask.sum(-1, keepdim=True)
    return bool((mask == (torch.arange(mask.shape[-1], device=mask.device) < lengths)).all())
