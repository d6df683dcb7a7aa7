# Copyright 2025 The AlbertAGPT authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""transformers' common model tests (`ModelTesterMixin`, `GenerationTesterMixin`) run against AlbertAGPT.

Drop this file into a transformers checkout as `tests/models/albertagpt/test_modeling_albertagpt.py` (with
`albertagpt` installed: it is not a model inside the library) and run `python -m pytest tests/models/albertagpt`
(see docs/transformers_common_tests.md). The test class is `ModelTesterMixin, GenerationTesterMixin` with a tester
that follows `CausalLMModelTester`'s conventions (tiny config, `ids_tensor` inputs, a padded attention mask); it does
not inherit `CausalLMModelTest`, which also mixes in `PipelineTesterMixin` (tiny Hub checkpoints) and RoPE tests.

Two testers run the same common tests: the default ALBERT layout (one shared block applied to every layer) and a
grouped layout (`num_hidden_groups=2` over 4 layer applications), where each group is applied twice and the KV
cache still has one slot per application.
"""

import tempfile
import unittest
import unittest.mock

import pytest
from transformers import PreTrainedModel, is_torch_available
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)
from transformers.testing_utils import require_torch, torch_device

try:  # transformers' own test modules: present only inside a transformers checkout's tests/models/albertagpt/
    from ...generation.test_utils import GenerationTesterMixin
    from ...test_configuration_common import ConfigTester
    from ...test_modeling_common import ModelTesterMixin, ids_tensor
    from ...test_tensor_parallel_mixin import TensorParallelTesterMixin
except ImportError:
    pytest.skip(
        "transformers' common tests need its tests/ folder: copy this file into a transformers checkout "
        "(docs/transformers_common_tests.md)",
        allow_module_level=True,
    )

if is_torch_available():
    import torch
    from transformers import DataCollatorWithFlattening

    from albertagpt import (
        AlbertAGPTConfig,
        AlbertAGPTForCausalLM,
        AlbertAGPTForSequenceClassification,
        AlbertAGPTModel,
    )

# A model inside the library is listed in these name tables, and the common tests read them to pick each class's
# labels, to leave the headless base model out of training tests and to choose the causal-LM-only tests. AlbertAGPT
# lives outside the library (`import albertagpt` registers it with the Auto classes, which these tables do not
# see), so list it here the way an in-library model would be.
MODEL_MAPPING_NAMES["albertagpt"] = "AlbertAGPTModel"
MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["albertagpt"] = "AlbertAGPTForCausalLM"
MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES["albertagpt"] = "AlbertAGPTForSequenceClassification"


class AlbertAGPTModelTester:
    def __init__(
        self,
        parent,
        batch_size=13,
        seq_length=7,
        is_training=True,
        use_input_mask=True,
        use_labels=True,
        vocab_size=99,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_hidden_groups=1,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_sequence_label_size=2,
        initializer_range=0.02,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ):
        self.parent = parent
        self.causal_lm_class = AlbertAGPTForCausalLM  # the class `TensorParallelTesterMixin` shards
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_hidden_groups = num_hidden_groups
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_sequence_label_size = type_sequence_label_size
        self.initializer_range = initializer_range
        self.num_labels = num_labels
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.head_dim = hidden_size // num_attention_heads

    def get_config(self):
        return AlbertAGPTConfig(
            vocab_size=self.vocab_size,
            embedding_size=self.embedding_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_hidden_groups=self.num_hidden_groups,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            num_labels=self.num_labels,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)

        input_mask = None
        if self.use_input_mask:
            # Left padding of varying length: `CausalLMModelTester`'s lower-triangular mask, mirrored. A decoder with
            # learned absolute positions needs left padding to generate (as GPT-2, whose upstream tester passes no
            # mask at all): from a right-padded prompt, `generate` numbers new tokens from the position of the last
            # (pad) column, and renumbers them from the mask when it continues from a cache.
            input_mask = torch.tril(torch.ones_like(input_ids).to(torch_device)).flip(-1)

        sequence_labels = None
        token_labels = None
        if self.use_labels:
            sequence_labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
            token_labels = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)

        config = self.get_config()
        return config, input_ids, input_mask, sequence_labels, token_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, _, _ = self.prepare_config_and_inputs()
        inputs_dict = {"input_ids": input_ids, "attention_mask": input_mask}
        return config, inputs_dict

    def create_and_check_model(self, config, input_ids, input_mask, *args):
        model = AlbertAGPTModel(config=config)
        model.to(torch_device)
        model.eval()
        result = model(input_ids, attention_mask=input_mask)
        result = model(input_ids)
        # The base model ends with the LM head's dense, activation and LayerNorm: `embedding_size` wide.
        self.parent.assertEqual(
            result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.embedding_size)
        )
        # One cache slot per layer *application*, not per weight group.
        self.parent.assertEqual(len(result.cache), self.num_hidden_layers)

    def create_and_check_for_causal_lm(self, config, input_ids, input_mask, sequence_labels, token_labels):
        model = AlbertAGPTForCausalLM(config=config)
        model.to(torch_device)
        model.eval()
        result = model(input_ids, attention_mask=input_mask, labels=token_labels)
        self.parent.assertEqual(result.loss.shape, ())
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))

    def create_and_check_for_sequence_classification(
        self, config, input_ids, input_mask, sequence_labels, token_labels
    ):
        model = AlbertAGPTForSequenceClassification(config)
        model.to(torch_device)
        model.eval()
        result = model(input_ids, attention_mask=input_mask, labels=sequence_labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))


@require_torch
class AlbertAGPTModelTest(ModelTesterMixin, GenerationTesterMixin, TensorParallelTesterMixin, unittest.TestCase):
    all_model_classes = (
        (AlbertAGPTModel, AlbertAGPTForCausalLM, AlbertAGPTForSequenceClassification) if is_torch_available() else ()
    )
    model_tester = None  # set by `setUp`; `TensorParallelTesterMixin` declares it as an abstract property
    model_tester_kwargs = {}
    # The upstream test skips models whose configuration file has no copyright year >= 2023 (older library models
    # whose `_init_weights` is not yet fixed); AlbertAGPT initializes every weight in `_init_weights`, so run it.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = AlbertAGPTModelTester(self, **self.model_tester_kwargs)
        self.config_tester = ConfigTester(self, config_class=AlbertAGPTConfig, hidden_size=37, num_attention_heads=1)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_model(*config_and_inputs)

    def test_for_causal_lm(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_for_causal_lm(*config_and_inputs)

    def test_for_sequence_classification(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_for_sequence_classification(*config_and_inputs)

    def test_reverse_loading_mapping(self):
        # The model's conversion mapping renames the LM head's checkpoint names (`lm_head.dense` ->
        # `model.head_transform.dense`, ...), which only the causal LM saves: the base model and the classifier save
        # their module names, so the upstream check that saving renamed some keys applies to the causal LM alone
        # (upstream's `skip_base_model` does the same for models whose mapping only their head model shows).
        with unittest.mock.patch.object(self, "all_model_classes", (AlbertAGPTForCausalLM,)):
            super().test_reverse_loading_mapping()

    def attention_mask_padding_matches_padding_free_with_position_ids(
        self, attn_implementation: str, fa_kwargs: bool = False
    ):
        # Overridden from `GenerationTesterMixin`, with one change: the upstream helper runs its left-padded reference
        # batch without `position_ids`, which matches the packed run only for models whose positions are shift
        # invariant (RoPE) or derived from the mask. AlbertAGPT has learned absolute positions that, when none are
        # given, run on from the cache length, so the padded reference gets the position ids `generate` builds from
        # the mask (`cumsum - 1`). The packed run and the comparison are the upstream ones.
        support_flag = {
            "sdpa": "_supports_sdpa",
            "flash_attention_2": "_supports_flash_attn",
            "flash_attention_3": "_supports_flash_attn",
        }
        for model_class in self.all_generative_model_classes:
            if attn_implementation != "eager" and not getattr(model_class, support_flag[attn_implementation]):
                self.skipTest(f"{model_class.__name__} does not support {attn_implementation}")
            config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
            self.assertIn(0, inputs_dict["attention_mask"])  # the reference batch must be padded

            model = model_class(config)
            with tempfile.TemporaryDirectory() as tmpdirname:
                model.save_pretrained(tmpdirname)
                model = (
                    model_class.from_pretrained(
                        tmpdirname, dtype=torch.bfloat16, attn_implementation=attn_implementation
                    )
                    .to(torch_device)
                    .eval()
                )
            self.assertTrue(
                all(
                    getattr(submodel, support_flag.get(attn_implementation, "_supports_attention_backend"))
                    for submodel in model.modules()
                    if isinstance(submodel, PreTrainedModel)
                )
            )

            dummy_input_ids = inputs_dict["input_ids"]
            dummy_attention_mask = inputs_dict["attention_mask"]
            dummy_input_ids[~dummy_attention_mask.bool()] = config.pad_token_id
            padded_position_ids = (dummy_attention_mask.long().cumsum(-1) - 1).masked_fill(
                dummy_attention_mask == 0, 0
            )

            if fa_kwargs:
                features = [
                    {"input_ids": i[a.bool()].tolist()}
                    for i, a in zip(dummy_input_ids, dummy_attention_mask, strict=True)
                ]
                batch = DataCollatorWithFlattening(return_tensors="pt", return_flash_attn_kwargs=True)(features)
                padfree_inputs_dict = {k: t.to(torch_device) if torch.is_tensor(t) else t for k, t in batch.items()}
            else:
                position_ids = (
                    torch.cat([torch.arange(length) for length in dummy_attention_mask.sum(1).tolist()])
                    .long()
                    .unsqueeze(0)
                    .to(torch_device)
                )
                padfree_inputs_dict = {
                    "input_ids": dummy_input_ids[dummy_attention_mask.bool()].unsqueeze(0),
                    "position_ids": position_ids,
                }

            res_padded = model(
                input_ids=dummy_input_ids,
                attention_mask=dummy_attention_mask,
                position_ids=padded_position_ids,
                use_cache=False,
            )
            res_padfree = model(**padfree_inputs_dict, use_cache=False)

            logits_padded = res_padded.logits[dummy_attention_mask.bool()]
            logits_padfree = res_padfree.logits[0]

            # acceptable numerical instability
            tol = torch.finfo(torch.bfloat16).eps
            torch.testing.assert_close(logits_padded, logits_padfree, rtol=tol, atol=tol)


@require_torch
class AlbertAGPTGroupedModelTest(AlbertAGPTModelTest):
    """Same tests with two weight groups, each applied twice (4 layer applications)."""

    model_tester_kwargs = {"num_hidden_layers": 4, "num_hidden_groups": 2}

    def test_num_layers_is_small(self):
        # The upstream test caps testers at 2 layers except for listed models that need more to cover all their
        # layer kinds; this tester needs 4 applications so that each of its 2 groups is shared by 2 of them.
        self.assertLessEqual(self.model_tester.num_hidden_layers, 4)
