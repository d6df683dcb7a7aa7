"""AlbertAGPT: ALBERT's factorized embeddings and shared layers in a causal decoder, as a transformers model.

Importing the package registers the classes with the Auto classes, and marks them for remote code so
that `save_pretrained` writes `auto_map` and copies the two model files next to the weights.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_albertagpt import AlbertAGPTConfig, deepnorm_settings
from .modeling_albertagpt import (
    AlbertAGPTForCausalLM,
    AlbertAGPTForSequenceClassification,
    AlbertAGPTModel,
    AlbertAGPTPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(AlbertAGPTConfig.model_type, AlbertAGPTConfig, exist_ok=True)
AlbertAGPTConfig.register_for_auto_class()
for auto_class, model_class in (
    (AutoModel, AlbertAGPTModel),
    (AutoModelForCausalLM, AlbertAGPTForCausalLM),
    (AutoModelForSequenceClassification, AlbertAGPTForSequenceClassification),
):
    auto_class.register(AlbertAGPTConfig, model_class, exist_ok=True)
    model_class.register_for_auto_class(auto_class.__name__)

__all__ = [
    "AlbertAGPTConfig",
    "AlbertAGPTPreTrainedModel",
    "AlbertAGPTModel",
    "AlbertAGPTForCausalLM",
    "AlbertAGPTForSequenceClassification",
    "deepnorm_settings",
]
