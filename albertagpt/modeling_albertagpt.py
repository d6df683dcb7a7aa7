"""AlbertAGPT: a causal decoder built from ALBERT's factorized embeddings, cross-layer parameter
sharing and post-sublayer LayerNorm.

The file reads in the order of the forward pass: embeddings, attention, MLP, the shared block, the
pre-trained base, the model, the heads. It is self-contained (only `torch`, `transformers` and the
sibling configuration file) because it is copied into Hub repositories as remote code.
"""

# First: the configuration file refuses a transformers older than this file needs, with the `pip install` that fixes
# it, before an import below fails less clearly.
from .configuration_albertagpt import AlbertAGPTConfig  # isort: skip

import os
import re
from collections.abc import Callable

import torch
from torch import nn
from transformers import AutoConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.models.albert import AlbertConfig, AlbertForMaskedLM
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

logger = logging.get_logger(__name__)

# One saved folder serves every Auto class; `save_pretrained` alone only records the saved class.
AUTO_MAP = {
    "AutoConfig": "configuration_albertagpt.AlbertAGPTConfig",
    "AutoModel": "modeling_albertagpt.AlbertAGPTModel",
    "AutoModelForCausalLM": "modeling_albertagpt.AlbertAGPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_albertagpt.AlbertAGPTForSequenceClassification",
}

# Checkpoints name the LM head as ALBERT names its MLM head, `lm_head.{dense,LayerNorm,decoder}`; the model holds the
# dense, activation and LayerNorm at the end of the base model (`model.head_transform`, where fused LM heads need
# them) and the decoder alone as `lm_head`. `from_pretrained` renames on load and `save_pretrained` renames back, so
# the checkpoint format does not depend on the module layout (checkpoints of earlier versions load unchanged).
CHECKPOINT_HEAD_RENAMINGS = {
    r"^lm_head\.dense\.": "model.head_transform.dense.",
    r"^lm_head\.LayerNorm\.": "model.head_transform.LayerNorm.",
    r"^lm_head\.decoder\.": "lm_head.",
}
register_checkpoint_conversion_mapping(
    "albertagpt",
    [WeightRenaming(source, target) for source, target in CHECKPOINT_HEAD_RENAMINGS.items()],
    overwrite=True,  # this file runs once as the package's module and once more per remote-code copy
)


def hidden_dropout(config: AlbertAGPTConfig) -> nn.Module:
    """ALBERT's hidden dropout, or `nn.Identity` when it is off (the default). A no-op `nn.Dropout` still checks its
    arguments and calls the dropout kernel: about 3 us more per call than `nn.Identity`, and decoding with 8 layers
    makes 17 calls per token (2% of a batch-1 decoding step on a CPU). To fine-tune with dropout, set
    `hidden_dropout_prob` in the config (e.g. `from_pretrained(path, hidden_dropout_prob=0.1)`)."""
    if config.hidden_dropout_prob > 0:
        return nn.Dropout(config.hidden_dropout_prob)
    return nn.Identity()


class AlbertAGPTEmbeddings(nn.Module):
    """Token + learned absolute position embeddings of width `embedding_size` (ALBERT's factorization)."""

    def __init__(self, config: AlbertAGPTConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dropout = hidden_dropout(config)

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.LongTensor) -> torch.Tensor:
        embeddings = inputs_embeds + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class AlbertAGPTAttention(nn.Module):
    """Causal multi-head self-attention.

    The module may be applied several times per forward pass (shared weights), so it holds no layer
    index: the caller passes the index of the current *application*, which selects the KV-cache slot.
    """

    def __init__(self, config: AlbertAGPTConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = True

        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        # DeepNorm's beta: the projections that write into the residual sum, and the values feeding one, start
        # scaled by `residual_init_scale` (read by `_init_weights`); queries and keys keep their initialization.
        self.v_proj.init_scale = self.o_proj.init_scale = config.residual_init_scale

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        layer_idx: int,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class AlbertAGPTMLP(nn.Module):
    def __init__(self, config: AlbertAGPTConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.up_proj.init_scale = self.down_proj.init_scale = config.residual_init_scale  # DeepNorm's beta
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


class AlbertAGPTMaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the hidden features whose batch statistics come from real tokens only (experiments only).

    In training it normalizes with the mean and variance of the tokens where `token_mask` is true (all tokens when
    it is None), so padding does not leak into them, and updates the running statistics; in eval mode it uses the
    running statistics, like `nn.BatchNorm1d`.
    """

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            tokens = hidden_states.reshape(-1, hidden_states.shape[-1])
            if token_mask is not None:
                tokens = tokens[token_mask.reshape(-1)]
            mean, variance = tokens.mean(0), tokens.var(0, unbiased=False)
            with torch.no_grad():
                count = tokens.shape[0]
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                unbiased = variance * count / max(count - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, variance = self.running_mean, self.running_var
        normalized = (hidden_states - mean) * torch.rsqrt(variance + self.eps)
        return (normalized * self.weight + self.bias).to(hidden_states.dtype)


def block_norm(config: AlbertAGPTConfig) -> nn.Module:
    """The norm `config.norm_type` names, for the blocks (and the final norm of pre-LN); `nn.Identity` for
    `norm_position="none"`. Chosen once here, so that the default LayerNorm path does no extra work per call."""
    if config.norm_position == "none":
        return nn.Identity()
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    if config.norm_type == "batchnorm":
        return AlbertAGPTMaskedBatchNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class AlbertAGPTLayer(GradientCheckpointingLayer):
    """One block (ALBERT's layer, made causal): `h = LN(h + Attn(h))`, then `h = LN(h + MLP(h))`.

    The post-LN stabilisers of the config change the two sums: `residual_alpha` scales the skip path,
    `h = LN(alpha * h + Attn(h))` (DeepNorm), and `b2t_connection` adds the block's input `x` to the second one,
    `h = LN(alpha * h + MLP(h) + x)` (the bottom-to-top connection).

    With `config.norm_position="pre"` (experiments) it computes `h = h + Attn(Norm(h))`, then `h = h + MLP(Norm(h))`,
    with norms named `pre_attention_layernorm` and `pre_feedforward_layernorm`; `"none"` keeps the post order with
    identities in place of the norms.
    """

    def __init__(self, config: AlbertAGPTConfig):
        super().__init__()
        self.norm_before_sublayer = config.norm_position == "pre"
        self.residual_alpha = float(config.residual_alpha)
        self.b2t_connection = config.b2t_connection
        if self.norm_before_sublayer:
            self.pre_attention_layernorm = block_norm(config)
            self.self_attn = AlbertAGPTAttention(config)
            self.pre_feedforward_layernorm = block_norm(config)
            self.mlp = AlbertAGPTMLP(config)
        else:
            self.self_attn = AlbertAGPTAttention(config)
            self.post_attention_layernorm = block_norm(config)
            self.mlp = AlbertAGPTMLP(config)
            self.post_feedforward_layernorm = block_norm(config)
        self.dropout = hidden_dropout(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        layer_idx: int = 0,
        cache: Cache | None = None,
        token_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        # Only batch norms receive `token_mask` (which tokens are real): their statistics must skip padding.
        norm_kwargs = {} if token_mask is None else {"token_mask": token_mask}
        if self.norm_before_sublayer:
            normed = self.pre_attention_layernorm(hidden_states, **norm_kwargs)
            attn_output, _ = self.self_attn(normed, attention_mask, layer_idx, cache=cache, **kwargs)
            hidden_states = hidden_states + self.dropout(attn_output)
            mlp_output = self.mlp(self.pre_feedforward_layernorm(hidden_states, **norm_kwargs))
            return hidden_states + self.dropout(mlp_output)
        block_input = hidden_states
        attn_output, _ = self.self_attn(hidden_states, attention_mask, layer_idx, cache=cache, **kwargs)
        hidden_states = self.post_attention_layernorm(
            self.skip(hidden_states) + self.dropout(attn_output), **norm_kwargs
        )
        mlp_output = self.mlp(hidden_states)
        skip = self.skip(hidden_states)
        if self.b2t_connection:
            skip = skip + block_input
        return self.post_feedforward_layernorm(skip + self.dropout(mlp_output), **norm_kwargs)

    def skip(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The skip path of a post-LN sum, `residual_alpha * h` (no multiplication at the default alpha of 1)."""
        return hidden_states if self.residual_alpha == 1.0 else self.residual_alpha * hidden_states


class AlbertAGPTHeadTransform(nn.Module):
    """The first half of ALBERT's MLM head: H -> E, activation, LayerNorm. It ends the base model, so that
    `last_hidden_state` is what the tied decoder (`lm_head`) multiplies."""

    def __init__(self, config: AlbertAGPTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act_fn(self.dense(hidden_states)))


class AlbertAGPTPreTrainedModel(PreTrainedModel):
    config: AlbertAGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AlbertAGPTLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # A shared block applied L times records L hidden states and L attention maps.
    _can_record_outputs = {
        "hidden_states": AlbertAGPTLayer,
        "attentions": AlbertAGPTAttention,
    }

    def __init__(self, config: AlbertAGPTConfig, *inputs, **kwargs):
        # `from_pretrained(path, num_attention_heads=...)` sets its overrides on a config that was validated before
        # them: check again before building, so that they fail with the same `ValueError` as at creation.
        config.validate_architecture()
        super().__init__(config, *inputs, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # DeepNorm's beta (`residual_init_scale`), set on the projections by their modules: the same draw, scaled.
        # Loaded weights are left alone (`init.copy_` skips them).
        scale = getattr(module, "init_scale", 1.0)
        if scale != 1.0:
            init.copy_(module.weight, module.weight * scale)

    def post_init(self) -> None:
        super().post_init()
        self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}


class AlbertAGPTModel(AlbertAGPTPreTrainedModel):
    """Factorized embeddings, then `num_hidden_layers` applications of `num_hidden_groups` shared blocks, then the
    head transform (H -> E, activation, LayerNorm), so that `last_hidden_state` is `embedding_size` wide and the
    logits are `last_hidden_state @ word_embeddings.T + bias`, the form that tools fusing the LM head with the loss
    (TRL's trainers, Liger) compute. `output_hidden_states` gives the embedding output and every application's
    `hidden_size` output. `add_head_transform=False` ends the model before the head transform, with `hidden_size`
    wide states (what `AlbertAGPTForSequenceClassification` pools)."""

    def __init__(self, config: AlbertAGPTConfig, add_head_transform: bool = True):
        super().__init__(config)
        self.embeddings = AlbertAGPTEmbeddings(config)
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.groups = nn.ModuleList([AlbertAGPTLayer(config) for _ in range(config.num_hidden_groups)])
        if config.norm_position == "pre":  # pre-LN leaves the residual stream unnormalized: one norm before the head
            self.final_layernorm = block_norm(config)
        self.head_transform = AlbertAGPTHeadTransform(config) if add_head_transform else None
        # Batch norms take their statistics over real tokens only, so they need to know which tokens are padding.
        self.norms_need_token_mask = config.norm_type == "batchnorm" and config.norm_position != "none"
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def layer_applications(self) -> list[AlbertAGPTLayer]:
        """The block each of the `num_hidden_layers` applications runs, in order. ALBERT's assignment: consecutive
        applications share a group (applications 0..L/G-1 run group 0, ...). Resolved once per forward pass: looking
        the block up per application (two config reads and a `ModuleList` index) cost 2% of a decoding step."""
        num_layers, num_groups = self.config.num_hidden_layers, self.config.num_hidden_groups
        groups = list(self.groups)
        return [groups[layer_idx * num_groups // num_layers] for layer_idx in range(num_layers)]

    def check_positions(self, position_ids: torch.Tensor | None, past_length: int, input_length: int) -> None:
        """Learned absolute positions end at `max_position_embeddings`: say so instead of an index error."""
        if torch.compiler.is_compiling():
            return
        max_positions = self.config.max_position_embeddings
        if position_ids is None:
            last_position = past_length + input_length - 1
        elif position_ids.numel():
            first_position, last_position = torch.stack(torch.aminmax(position_ids)).tolist()  # one device sync
            if first_position < 0:
                raise ValueError(f"`position_ids` must not be negative, got {first_position}.")
        else:
            last_position = -1
        if last_position >= max_positions:
            raise ValueError(
                f"Position {last_position} is out of range: this model has learned positions only up to "
                f"`max_position_embeddings` ({max_positions}); shorten the input (cached {past_length} + "
                f"new {input_length} tokens)."
            )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)  # the hidden states stay `hidden_size` wide, one per application
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)

        # One cache slot per layer *application* (the config's `num_hidden_layers`), not per weight group.
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        past_length = cache.get_seq_length() if cache is not None else 0
        input_length = inputs_embeds.shape[1]
        self.check_positions(position_ids, past_length, input_length)
        if position_ids is None:
            position_ids = torch.arange(input_length, device=inputs_embeds.device) + past_length
            position_ids = position_ids.unsqueeze(0)

        hidden_states = self.embeddings(inputs_embeds, position_ids)
        hidden_states = self.embedding_hidden_mapping_in(hidden_states)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        norm_kwargs = {}
        if self.norms_need_token_mask and attention_mask is not None and attention_mask.dim() == 2:
            norm_kwargs["token_mask"] = attention_mask[:, -input_length:].bool()

        for layer_idx, layer in enumerate(self.layer_applications()):
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                layer_idx=layer_idx,
                cache=cache,
                **norm_kwargs,
                **kwargs,
            )
        if self.config.norm_position == "pre":
            hidden_states = self.final_layernorm(hidden_states, **norm_kwargs)
        if self.head_transform is not None:
            hidden_states = self.head_transform(hidden_states)

        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class AlbertAGPTForCausalLM(AlbertAGPTPreTrainedModel, GenerationMixin):
    # weight tying: the factorized head decodes with the token embedding matrix
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.word_embeddings.weight"}
    # Sharded on the vocabulary like the `embedding_rowwise` word embeddings it is tied to, logits gathered.
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: AlbertAGPTConfig):
        super().__init__(config)
        self.model = AlbertAGPTModel(config)
        # ALBERT's MLM decoder: the base model ends with the head's dense, activation and LayerNorm.
        self.lm_head = nn.Linear(config.embedding_size, config.vocab_size)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids to predict; they are shifted inside, so pass `labels = input_ids`. `-100` is ignored.
            With `num_items_in_batch` (passed by `Trainer`) the loss is exact under gradient accumulation.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits only for the last `logits_to_keep` positions (`0` keeps all); `generate` uses 1.
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @classmethod
    def from_albert(cls, model_or_path: AlbertForMaskedLM | str | os.PathLike) -> "AlbertAGPTForCausalLM":
        r"""
        Warm-starts a causal LM from an ALBERT masked LM: ALBERT's weights under AlbertAGPT's names (see
        `ALBERT_TO_ALBERTAGPT`), with ALBERT's sizes, groups, activation, `layer_norm_eps`, positions and special
        token ids. The result computes exactly what ALBERT computes on one segment with causal attention.

        Args:
            model_or_path (`AlbertForMaskedLM`, `str` or `os.PathLike`):
                A loaded model, or a local folder or Hub id holding one (to pick a revision or pass a token, load
                the `AlbertForMaskedLM` yourself and pass it).

        ```python
        >>> model = AlbertAGPTForCausalLM.from_albert("albert/albert-base-v2")
        >>> model.save_pretrained("albertagpt-base-v2")
        ```
        """
        if isinstance(model_or_path, (str, os.PathLike)):
            albert_config = AutoConfig.from_pretrained(model_or_path)
            if not isinstance(albert_config, AlbertConfig):
                raise ValueError(
                    f"{str(model_or_path)!r} holds a model with `model_type` {albert_config.model_type!r}, "
                    "not an ALBERT one ('albert')."
                )
            albertagpt_config_from_albert(albert_config)  # refuse an unsupported variant before loading its weights
            albert = AlbertForMaskedLM.from_pretrained(model_or_path, config=albert_config)
        elif isinstance(model_or_path, AlbertForMaskedLM):
            albert = model_or_path
        else:
            raise TypeError(
                "`model_or_path` must be an `AlbertForMaskedLM`, a folder or a Hub id, "
                f"got {type(model_or_path).__name__}."
            )
        model = cls(albertagpt_config_from_albert(albert.config))
        model.load_state_dict(albertagpt_state_dict_from_albert(albert.state_dict()))
        return model.to(albert.dtype).eval()


class AlbertAGPTForSequenceClassification(AlbertAGPTPreTrainedModel):
    """Classifies a sequence from the hidden state of its last non-pad token (as GPT-2 does). Without `position_ids`,
    positions count the real tokens of `attention_mask`, so left and right padding give the same logits."""

    def __init__(self, config: AlbertAGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = AlbertAGPTModel(config, add_head_transform=False)  # pools the last application's output
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embeddings.word_embeddings = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices (cross-entropy), or float targets when `config.num_labels == 1` (regression).
        """
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Positions count real tokens only, so that a left-padded row gets the logits of the same row unpadded
            # (the base model's default positions would count its pads).
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            if cache is not None:  # the mask covers the cached tokens too
                position_ids = position_ids[:, cache.get_seq_length() :]
        outputs: BaseModelOutputWithPast = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size = logits.shape[0]

        pad_token_id = self.config.pad_token_id
        if pad_token_id is None and batch_size != 1:
            raise ValueError("Cannot pool batches of more than one sequence when `pad_token_id` is not set.")
        if pad_token_id is None or input_ids is None:
            if input_ids is None:
                logger.warning_once("Padding is not detected in `inputs_embeds`: pooling the last position.")
            last_token = torch.full((batch_size,), -1, device=logits.device)
        else:
            # The rightmost non-pad token handles both left and right padding.
            non_pad = (input_ids != pad_token_id).to(logits.device, torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last_token = (positions * non_pad).argmax(-1)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_token]

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)

        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# Warm start from ALBERT. AlbertAGPT's block is ALBERT's, made causal, and ALBERT's MLM head has the shape of the LM
# head, so an `AlbertForMaskedLM` converts by renaming its modules (each parameter keeps its `weight`/`bias`).
# `*` stands for the layer group; ALBERT nests one layer in each group (`inner_group_num = 1`).
ALBERT_LAYER = "albert.encoder.albert_layer_groups.*.albert_layers.0"
ALBERT_TO_ALBERTAGPT = {
    "albert.embeddings.word_embeddings": "model.embeddings.word_embeddings",
    "albert.embeddings.position_embeddings": "model.embeddings.position_embeddings",  # + token type 0, see below
    "albert.embeddings.LayerNorm": "model.embeddings.LayerNorm",
    "albert.encoder.embedding_hidden_mapping_in": "model.embedding_hidden_mapping_in",
    f"{ALBERT_LAYER}.attention.query": "model.groups.*.self_attn.q_proj",
    f"{ALBERT_LAYER}.attention.key": "model.groups.*.self_attn.k_proj",
    f"{ALBERT_LAYER}.attention.value": "model.groups.*.self_attn.v_proj",
    f"{ALBERT_LAYER}.attention.dense": "model.groups.*.self_attn.o_proj",
    f"{ALBERT_LAYER}.attention.LayerNorm": "model.groups.*.post_attention_layernorm",
    f"{ALBERT_LAYER}.ffn": "model.groups.*.mlp.up_proj",
    f"{ALBERT_LAYER}.ffn_output": "model.groups.*.mlp.down_proj",
    f"{ALBERT_LAYER}.full_layer_layer_norm": "model.groups.*.post_feedforward_layernorm",
    "predictions.dense": "model.head_transform.dense",
    "predictions.LayerNorm": "model.head_transform.LayerNorm",
    "predictions.decoder": "lm_head",
}
# A causal LM reads one segment, so ALBERT's token type 0 is a constant added next to the position embeddings before
# the embedding LayerNorm: folding it into them is exact. `predictions.bias` is a second name of the decoder's bias.
ALBERT_TOKEN_TYPE_EMBEDDINGS = "albert.embeddings.token_type_embeddings.weight"
ALBERT_DECODER_BIAS_ALIAS = "predictions.bias"
# Fields with the same name and meaning in both configs. ALBERT's `type_vocab_size` is folded away (above) and its
# `classifier_dropout_prob` belongs to the sentence-order head, which is not converted.
ALBERT_SHARED_CONFIG_FIELDS = (
    "vocab_size",
    "embedding_size",
    "hidden_size",
    "num_hidden_layers",
    "num_hidden_groups",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "layer_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def albertagpt_config_from_albert(albert_config: AlbertConfig) -> AlbertAGPTConfig:
    """The `AlbertAGPTConfig` of an ALBERT model's shape; variants AlbertAGPT cannot express raise `ValueError`.

    Dropout differs in one place, in training only: ALBERT applies `hidden_dropout_prob` after attention but not
    after its feed-forward, AlbertAGPT after both (ALBERT v2 checkpoints set both dropouts to 0).
    """
    if albert_config.inner_group_num != 1:
        raise ValueError(
            f"ALBERT's `inner_group_num` is {albert_config.inner_group_num}: AlbertAGPT applies one layer per group, "
            "so only checkpoints with `inner_group_num=1` convert."
        )
    position_embedding_type = getattr(albert_config, "position_embedding_type", "absolute")
    if position_embedding_type != "absolute":
        raise ValueError(
            f"ALBERT's `position_embedding_type` is {position_embedding_type!r}: AlbertAGPT learns absolute "
            "positions, so only checkpoints with `position_embedding_type='absolute'` convert."
        )
    return AlbertAGPTConfig(**{field: getattr(albert_config, field) for field in ALBERT_SHARED_CONFIG_FIELDS})


def albertagpt_name_from_albert(albert_name: str) -> str:
    """Translates one `AlbertForMaskedLM` parameter name through `ALBERT_TO_ALBERTAGPT`."""
    for albert_module, albertagpt_module in ALBERT_TO_ALBERTAGPT.items():
        pattern = re.escape(albert_module).replace(r"\*", r"(?P<group>\d+)") + r"\.(?P<parameter>weight|bias)"
        if match := re.fullmatch(pattern, albert_name):
            albertagpt_module = albertagpt_module.replace("*", match.groupdict().get("group", ""))
            return f"{albertagpt_module}.{match['parameter']}"
    raise ValueError(f"ALBERT parameter {albert_name!r} has no counterpart in AlbertAGPT.")


def albertagpt_state_dict_from_albert(albert_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames an `AlbertForMaskedLM` state dict for `AlbertAGPTForCausalLM`, folding token type 0 into positions."""
    state_dict = {
        albertagpt_name_from_albert(name): tensor
        for name, tensor in albert_state_dict.items()
        if name not in (ALBERT_TOKEN_TYPE_EMBEDDINGS, ALBERT_DECODER_BIAS_ALIAS)
    }
    positions = "model.embeddings.position_embeddings.weight"
    state_dict[positions] = state_dict[positions] + albert_state_dict[ALBERT_TOKEN_TYPE_EMBEDDINGS][0]
    return state_dict


__all__ = [
    "AlbertAGPTPreTrainedModel",
    "AlbertAGPTModel",
    "AlbertAGPTForCausalLM",
    "AlbertAGPTForSequenceClassification",
]
