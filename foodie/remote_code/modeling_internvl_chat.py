"""InternVL chat model: ViT -> pixel shuffle -> MLP projector -> LLM (InternVL2-2B layout).

Each 448x448 tile gives 32x32 ViT patch features; pixel shuffle folds every 2x2 block of patches into one
token with 4x the channels (16x16 = 256 tokens), and mlp1 projects them into the LLM's embedding space.
In the prompt, each image is  <img> + 256 * tiles * <IMG_CONTEXT> + </img>,  and the embeddings of the
<IMG_CONTEXT> tokens are replaced by the projected image tokens, in order.
"""
import importlib.util
import warnings

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_internvl_chat import InternVLChatConfig
from .conversation import get_conv_template
from .modeling_intern_vit import InternVisionModel
from .modeling_internlm2 import InternLM2ForCausalLM

IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN = '<img>', '</img>', '<IMG_CONTEXT>'


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    _auto_class = 'AutoModel'  # save_pretrained copies this code next to the weights
    main_input_name = 'pixel_values'
    _no_split_modules = ['InternVisionModel', 'InternLM2DecoderLayer']
    _supports_flash_attn_2 = True
    supports_gradient_checkpointing = True

    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        self.patch_size = config.vision_config.patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.num_image_token = int((image_size // self.patch_size) ** 2 * (config.downsample_ratio ** 2))
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.llm_arch_name = config.llm_config.architectures[0]

        # OpenGVLab's InternViT and InternLM2 files: flash-attn when asked for (llm_config) and installed, else eager.
        flash = (use_flash_attn and config.llm_config.attn_implementation == 'flash_attention_2'
                 and importlib.util.find_spec('flash_attn') is not None)
        config.llm_config.attn_implementation = 'flash_attention_2' if flash else 'eager'
        config.vision_config.use_flash_attn = flash

        self.vision_model = vision_model if vision_model is not None else InternVisionModel(config.vision_config)
        # InternVLChatConfig accepts only InternLM2ForCausalLM as llm_config.architectures[0]
        self.language_model = language_model if language_model is not None else InternLM2ForCausalLM(config.llm_config)
        if getattr(self.language_model, '_supports_cache_class', False):
            # XTuner 0.2.0's InternLM2 file (InternLM2.5's) declares Cache support, so transformers 4.48 starts it
            # on an empty DynamicCache and it drops inputs_embeds (the images); without, it starts as InternVL2's.
            self.language_model._supports_cache_class = False

        shuffled = config.vision_config.hidden_size * int(1 / self.downsample_ratio) ** 2  # channels, pixel-shuffled
        llm_hidden_size = config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(shuffled), nn.Linear(shuffled, llm_hidden_size), nn.GELU(),
                                  nn.Linear(llm_hidden_size, llm_hidden_size))

        self.img_context_token_id = None
        self.conv_template = get_conv_template(self.template)
        self.system_message = self.conv_template.system_message
        if config.use_backbone_lora or config.use_llm_lora:  # InternVL's own LoRA training, not merged
            raise NotImplementedError('use_backbone_lora / use_llm_lora: this code loads merged checkpoints only; '
                                      "merge the LoRA first (or load with the checkpoint's own remote code)")

    # ----- embeddings -----

    def tie_weights(self):
        # Only the language model decides (llm_config.tie_word_embeddings; False for InternVL2): the chat
        # config's own tie_word_embeddings is a meaningless default that must not tie anything.
        if hasattr(self.language_model, 'tie_weights'):
            self.language_model.tie_weights()

    @property
    def lm_head(self):
        return self.language_model.get_output_embeddings()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def pixel_shuffle(self, x, scale_factor=0.5):
        """[N, W, H, C] -> [N, W*s, H*s, C/s^2]: each 1/s x 1/s block of patches becomes one token."""
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        if self.ps_version == 'v1':
            warnings.warn("In ps_version 'v1', the height and width have not been swapped back, "
                          'which results in a transposed image.')
        else:
            x = x.permute(0, 2, 1, 3).contiguous()
        return x

    def extract_feature(self, pixel_values):
        """[tiles, 3, 448, 448] -> [tiles, num_image_token, llm_hidden]."""
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=self.select_layer != -1,
                                return_dict=True)
        vit_embeds = out.last_hidden_state if self.select_layer == -1 else out.hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]  # drop the class token
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)

    def _check_img_context_token_id(self):
        if self.img_context_token_id is None:
            raise ValueError('img_context_token_id is not set: assign '
                             "model.img_context_token_id = tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>') "
                             '(chat() and batch_chat() do this)')

    # ----- training forward -----

    def forward(self, pixel_values, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """image_flags[i] = 0 marks tile i as padding (text-only samples carry a blank tile)."""
        self._check_img_context_token_id()
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        if image_flags is None:
            image_flags = torch.ones(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)
        image_flags = image_flags.reshape(-1)  # (tiles,) or (tiles, 1); reshape keeps one tile 1-D
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()

        vit_embeds = self.extract_feature(pixel_values)
        vit_embeds = vit_embeds[image_flags == 1]

        B, N, C = input_embeds.shape
        input_embeds = input_embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        ignore_flag = False
        if int(selected.sum()) == vit_embeds.shape[0] * vit_embeds.shape[1]:
            # "* 0.0 +" keeps the replaced text embeddings in the graph (as the official code does)
            input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, C)
        else:
            # as the official code: fill what fits, warn, and zero this batch's loss
            vit_embeds = vit_embeds.reshape(-1, C)
            n_token = int(selected.sum())
            print(f'warning: {n_token} <IMG_CONTEXT> tokens but {vit_embeds.shape[0]} image tokens; '
                  'the loss of this batch is ignored')
            n = min(n_token, vit_embeds.shape[0])
            idx = selected.nonzero().squeeze(-1)[:n]
            input_embeds[idx] = input_embeds[idx] * 0.0 + vit_embeds[:n]
            ignore_flag = True
        input_embeds = input_embeds.reshape(B, N, C)

        outputs = self.language_model(inputs_embeds=input_embeds, attention_mask=attention_mask,
                                      position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                                      output_attentions=output_attentions,
                                      output_hidden_states=output_hidden_states, return_dict=True)
        logits = outputs.logits

        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].reshape(-1, self.language_model.config.vocab_size)
            shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)
            if ignore_flag:
                loss = loss * 0.0

        outputs = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                         hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return outputs if return_dict else outputs.to_tuple()

    # ----- inference -----

    def _image_tokens(self, num_patches, IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN):
        return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN

    def _prompt(self, question, history=()):
        """The conversation template's prompt for question after history [(question, answer), ...]; its sep."""
        template = get_conv_template(self.template)
        template.system_message = self.system_message
        for old_question, old_answer in history:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        return template.get_prompt(), template.sep.strip()

    def _answer(self, tokenizer, pixel_values, queries, generation_config, sep):
        """Generate for the queries (left-padded as a batch) up to the template's separator."""
        padding_side, tokenizer.padding_side = tokenizer.padding_side, 'left'
        try:
            model_inputs = tokenizer(queries, return_tensors='pt', padding=len(queries) > 1)
        finally:
            tokenizer.padding_side = padding_side
        eos_token_id = tokenizer.convert_tokens_to_ids(sep)
        generation_output = self.generate(pixel_values=pixel_values,
                                          input_ids=model_inputs['input_ids'].to(self.device),
                                          attention_mask=model_inputs['attention_mask'].to(self.device),
                                          **dict(generation_config, eos_token_id=eos_token_id))
        responses = tokenizer.batch_decode(generation_output, skip_special_tokens=True)
        return [response.split(sep)[0].strip() for response in responses]

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None,
                   history=None, return_history=False, IMG_START_TOKEN=IMG_START_TOKEN, IMG_END_TOKEN=IMG_END_TOKEN,
                   IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False):
        """One turn for each of several questions, each with its own image (num_patches_list[i] tiles, in
        order in pixel_values). Multi-turn history is not supported here, as in the official code."""
        if history is not None or return_history:
            raise NotImplementedError('multi-turn chat is not supported in batch_chat; use chat()')
        if num_patches_list is None:
            if pixel_values is None:
                num_patches_list = [0] * len(questions)
            elif len(questions) == 1:
                num_patches_list = [pixel_values.shape[0]]
            else:
                raise ValueError('batch_chat with several questions needs num_patches_list '
                                 '(the number of tiles of each question\'s image, in order)')
        if len(num_patches_list) != len(questions):
            raise ValueError(f'{len(questions)} questions but {len(num_patches_list)} entries in num_patches_list')
        if pixel_values is not None and len(pixel_values) != sum(num_patches_list):
            raise ValueError(f'pixel_values has {len(pixel_values)} tiles but num_patches_list sums to '
                             f'{sum(num_patches_list)}')

        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        if verbose and pixel_values is not None:
            print(f'dynamic ViT batch size: {pixel_values.shape[0]}')
        queries = []
        for question, num_patches in zip(questions, num_patches_list):
            if pixel_values is not None and '<image>' not in question:
                question = '<image>\n' + question
            query, sep = self._prompt(question)
            if pixel_values is not None:
                query = query.replace('<image>', self._image_tokens(num_patches, IMG_START_TOKEN, IMG_END_TOKEN,
                                                                    IMG_CONTEXT_TOKEN), 1)
            queries.append(query)
        return self._answer(tokenizer, pixel_values, queries, generation_config, sep)

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN=IMG_START_TOKEN, IMG_END_TOKEN=IMG_END_TOKEN,
             IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False):
        """One turn of a conversation about zero, one or several images.

        Each image of pixel_values (num_patches_list[i] tiles each, in order) fills the next '<image>'
        placeholder of the prompt; a first question without one gets '<image>\\n' in front. history is a
        list of (question, answer) pairs; earlier questions keep their '<image>' placeholders, so pass the
        same pixel_values on every turn.
        """
        if history is None and pixel_values is not None and '<image>' not in question:
            question = '<image>\n' + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and len(pixel_values) != sum(num_patches_list):
            raise ValueError(f'pixel_values has {len(pixel_values)} tiles but num_patches_list sums to '
                             f'{sum(num_patches_list)}')

        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        history = [] if history is None else history
        query, sep = self._prompt(question, history)
        if verbose and pixel_values is not None:
            print(f'dynamic ViT batch size: {pixel_values.shape[0]}')
        if query.count('<image>') < len(num_patches_list):
            raise ValueError(f"{len(num_patches_list)} images but only {query.count('<image>')} '<image>' "
                             "placeholders in the conversation: put one '<image>' per image in the question, "
                             "e.g. 'Image-1: <image>\\nImage-2: <image>\\n...'")
        for num_patches in num_patches_list:
            query = query.replace('<image>', self._image_tokens(num_patches, IMG_START_TOKEN, IMG_END_TOKEN,
                                                                IMG_CONTEXT_TOKEN), 1)

        response = self._answer(tokenizer, pixel_values, [query], generation_config, sep)[0]
        history.append((question, response))
        if return_history:
            return response, history
        if verbose:
            query_to_print = query.replace(IMG_CONTEXT_TOKEN, '').replace(f'{IMG_START_TOKEN}{IMG_END_TOKEN}',
                                                                          '<image>')
            print(query_to_print, response)
        return response

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config=None, output_hidden_states=None, **generate_kwargs):
        """Generate from a prompt whose <IMG_CONTEXT> tokens stand for pixel_values (or precomputed
        visual_features). Returns only the new token ids. Accepts every `generate` option (streamer,
        max_new_tokens, do_sample, ...)."""
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None or visual_features is not None:
            self._check_img_context_token_id()
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            B, N, C = input_embeds.shape
            input_embeds = input_embeds.reshape(B * N, C)
            selected = input_ids.reshape(B * N) == self.img_context_token_id
            vit_embeds = vit_embeds.reshape(-1, C)
            if int(selected.sum()) != vit_embeds.shape[0]:
                raise ValueError(f'the prompt has {int(selected.sum())} <IMG_CONTEXT> tokens but the images give '
                                 f'{vit_embeds.shape[0]} ({self.num_image_token} per tile): check '
                                 'num_patches_list and the <image> placeholders')
            input_embeds[selected] = vit_embeds.to(input_embeds.device, input_embeds.dtype)
            input_embeds = input_embeds.reshape(B, N, C)

        return self.language_model.generate(inputs_embeds=input_embeds, attention_mask=attention_mask,
                                            generation_config=generation_config,
                                            output_hidden_states=output_hidden_states, use_cache=True,
                                            **generate_kwargs)
