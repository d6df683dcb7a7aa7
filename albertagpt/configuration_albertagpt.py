"""AlbertAGPT model configuration.

This file is self-contained (it imports only transformers and its dependencies huggingface_hub and packaging) because
it is copied into Hub repositories as remote code next to `modeling_albertagpt.py`.
"""

import math

import transformers
from packaging import version

# The oldest transformers the model runs on (5.24 renamed `past_key_values` to `cache`, in `create_causal_mask` too).
# Hub users load this file and `modeling_albertagpt.py` as remote code without installing the package, so its
# dependency bound never reaches them: importing this file (the modeling file imports it first) checks it, before
# an older version fails in an import below or inside `generate`.
MIN_TRANSFORMERS_VERSION = "5.24.0"
if version.parse(transformers.__version__).release < version.parse(MIN_TRANSFORMERS_VERSION).release:
    raise ImportError(
        f"AlbertAGPT needs transformers>={MIN_TRANSFORMERS_VERSION}, but transformers {transformers.__version__} is "
        f'installed. Upgrade it: pip install "transformers>={MIN_TRANSFORMERS_VERSION}"'
    )

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers.activations import ACT2FN  # noqa: E402
from transformers.configuration_utils import PreTrainedConfig  # noqa: E402

# Where the block's norms sit and what they compute. The defaults are the architecture; the others exist for the
# LayerNorm lab (`albertagpt.lab`), which measures what post-sublayer LayerNorm buys.
NORM_POSITIONS = ("post", "pre", "none")
NORM_TYPES = ("layernorm", "rmsnorm", "batchnorm")
# Residual stabilisers of post-LN (no-ops at these defaults); `deepnorm_settings` gives DeepNorm's values.
RESIDUAL_STABILISER_DEFAULTS = {"residual_alpha": 1.0, "residual_init_scale": 1.0, "b2t_connection": False}


def deepnorm_settings(num_hidden_layers: int) -> dict[str, float]:
    """DeepNorm's constants for a decoder of `num_hidden_layers` layer applications (Wang et al. 2022, "DeepNet"):
    `residual_alpha` = (2N)^(1/4) and `residual_init_scale` = (8N)^(-1/4). N counts applications, not weight groups:
    a shared block applied 12 times is as deep as 12 distinct blocks.

    ```python
    >>> AlbertAGPTConfig(num_hidden_layers=24, **deepnorm_settings(24))
    ```
    """
    if num_hidden_layers <= 0:
        raise ValueError(f"`num_hidden_layers` must be a positive integer, got {num_hidden_layers}.")
    return {
        "residual_alpha": (2 * num_hidden_layers) ** 0.25,
        "residual_init_scale": (8 * num_hidden_layers) ** -0.25,
    }


@strict
class AlbertAGPTConfig(PreTrainedConfig):
    r"""
    Configuration of an AlbertAGPT model: a causal decoder with ALBERT's factorized embeddings
    (`vocab_size` x `embedding_size`, then `embedding_size` -> `hidden_size`), cross-layer parameter
    sharing (`num_hidden_layers` applications of `num_hidden_groups` distinct blocks) and a LayerNorm
    after each sublayer (`h = LayerNorm(h + SubLayer(h))`).

    Args:
        vocab_size:
            Tokens in the vocabulary: rows of the word embeddings, columns of the logits.
        embedding_size:
            Width `E` of the word and position embeddings; the tied LM head decodes through the same width.
        hidden_size:
            Width `H` of the blocks; `embedding_hidden_mapping_in` maps `E` to `H`.
        num_hidden_layers:
            Layer applications (the depth). Each has its own KV-cache slot, whichever block it applies.
        num_hidden_groups:
            Distinct blocks shared by the applications, each applied `num_hidden_layers / num_hidden_groups` times:
            1 (ALBERT's default) shares one block, `num_hidden_layers` shares none. Must divide `num_hidden_layers`.
        num_attention_heads:
            Attention heads; must divide `hidden_size`.
        intermediate_size:
            Width of the MLP.
        hidden_act:
            Activation of the MLP and of the LM head's dense layer (a key of transformers' `ACT2FN`).
        max_position_embeddings:
            Learned positions: the longest sequence the model takes.
        hidden_dropout_prob:
            Dropout on the embeddings and after each sublayer; at 0 no dropout module is built.
        attention_probs_dropout_prob:
            Dropout on the attention weights.
        layer_norm_eps:
            Epsilon of every norm.
        norm_position:
            For experiments only: `"post"` (the architecture, `h = Norm(h + SubLayer(h))`), `"pre"`
            (`h = h + SubLayer(Norm(h))`, with a final norm before the head) or `"none"` (no norms in the blocks). The
            embedding and head LayerNorms stay as they are.
        norm_type:
            For experiments only: `"layernorm"` (the architecture), `"rmsnorm"` or `"batchnorm"` (statistics over the
            batch's non-pad tokens).
        residual_alpha:
            Post-LN stabiliser, a no-op at 1: scales the skip path, `LayerNorm(residual_alpha * h + SubLayer(h))`
            (DeepNorm's alpha; `deepnorm_settings` gives it).
        residual_init_scale:
            Post-LN stabiliser, a no-op at 1: multiplies the initial weights of `v_proj`, `o_proj`, `up_proj` and
            `down_proj` (DeepNorm's beta; `deepnorm_settings` gives it).
        b2t_connection:
            Post-LN stabiliser, a no-op when false: the block's last LayerNorm also adds the block's input `x`,
            `LayerNorm(residual_alpha * h1 + MLP(h1) + x)` (the bottom-to-top connection of Takase et al. 2023).
        initializer_range:
            Standard deviation of the normal initialization of the weights.
        use_cache:
            Return a KV cache from the forward pass, for `generate()`.
        tie_word_embeddings:
            The LM head's decoder is the word embedding matrix.
        pad_token_id:
            Id of the padding token.
        bos_token_id:
            Id of the beginning-of-sequence token.
        eos_token_id:
            Id (or ids) of the end-of-sequence token.

    Invalid combinations raise `ValueError` at creation, naming the offending field.

    ```python
    >>> from albertagpt import AlbertAGPTConfig, AlbertAGPTForCausalLM
    >>> config = AlbertAGPTConfig(vocab_size=1000, hidden_size=64, num_attention_heads=4, intermediate_size=256)
    >>> model = AlbertAGPTForCausalLM(config)
    ```
    """

    model_type = "albertagpt"
    keys_to_ignore_at_inference = ["cache"]
    # Tensor-parallel plan of the base model: the word embeddings shard on the vocabulary (each rank holds a slice of
    # the table, and the causal LM's tied `lm_head` shards with them), shared blocks shard like any other block.
    base_model_tp_plan = {
        "embeddings.word_embeddings": "embedding_rowwise",
        "groups.*.self_attn.q_proj": "colwise",
        "groups.*.self_attn.k_proj": "colwise",
        "groups.*.self_attn.v_proj": "colwise",
        "groups.*.self_attn.o_proj": "rowwise",
        "groups.*.mlp.up_proj": "colwise",
        "groups.*.mlp.down_proj": "rowwise",
    }
    # FSDP2 plan of transformers' native sharding (`DistributedConfig(fsdp_size=...)`): every weight group (shared
    # block) is a unit, gathered per application; the embeddings stay in the root unit with the head tied to them.
    # `albertagpt.distributed` applies the same plan under Accelerate or `torchrun`.
    base_model_fsdp_plan = {"groups.*": "free_full_weight"}

    vocab_size: int = 32000
    embedding_size: int = 128
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 1024
    # `int` too, as in ALBERT's and GPT-2's configs: a config.json written by hand or by ALBERT may say `0`.
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    layer_norm_eps: float = 1e-5
    norm_position: str = "post"
    norm_type: str = "layernorm"
    residual_alpha: float | int = 1.0
    residual_init_scale: float | int = 1.0
    b2t_connection: bool = False
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs):
        # Raised here rather than only in a `validate_*` hook so that callers get a plain `ValueError`.
        self.validate_architecture()
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Checks every size and combination; each message names the field at fault."""
        for field in (
            "vocab_size",
            "embedding_size",
            "hidden_size",
            "num_hidden_layers",
            "num_hidden_groups",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, field)
            if value <= 0:
                raise ValueError(f"`{field}` must be a positive integer, got {value}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.num_hidden_groups > self.num_hidden_layers:
            raise ValueError(
                f"`num_hidden_groups` ({self.num_hidden_groups}) cannot exceed `num_hidden_layers` "
                f"({self.num_hidden_layers}): every group must be applied at least once."
            )
        if self.num_hidden_layers % self.num_hidden_groups != 0:
            raise ValueError(
                f"`num_hidden_groups` ({self.num_hidden_groups}) must divide `num_hidden_layers` "
                f"({self.num_hidden_layers}) so that each group is applied equally often."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"`hidden_act` {self.hidden_act!r} is not a known activation; choose one of {sorted(ACT2FN)}."
            )
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{field}` must lie in [0, 1), got {value}.")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"`layer_norm_eps` must be positive, got {self.layer_norm_eps}.")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"`norm_position` must be one of {NORM_POSITIONS}, got {self.norm_position!r}.")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"`norm_type` must be one of {NORM_TYPES}, got {self.norm_type!r}.")
        for field in ("residual_alpha", "residual_init_scale"):
            value = getattr(self, field)
            if not 0 < value < math.inf:
                raise ValueError(f"`{field}` must be a positive finite number, got {value}.")
        if self.norm_position != "post":
            for field, default in RESIDUAL_STABILISER_DEFAULTS.items():
                if getattr(self, field) != default:
                    raise ValueError(
                        f"`{field}` ({getattr(self, field)}) is a post-LN stabiliser: it needs `norm_position` "
                        f"'post', got {self.norm_position!r}."
                    )
        if self.initializer_range < 0:
            raise ValueError(f"`initializer_range` must be non-negative, got {self.initializer_range}.")


__all__ = ["AlbertAGPTConfig", "MIN_TRANSFORMERS_VERSION", "deepnorm_settings"]
