"""`pipeline("text-generation")` works with a tokenizer trained here, and agrees with `generate`."""

from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from transformers import AutoTokenizer, pipeline

from albertagpt import AlbertAGPTForCausalLM
from albertagpt.data import builtin_corpus
from albertagpt.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(builtin_corpus("train")[:15], vocab_size=400)
    torch.manual_seed(0)
    model = AlbertAGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), initializer_range=0.3))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_text_generation_pipeline_matches_generate(model_folder: Path) -> None:
    generator = pipeline("text-generation", model=str(model_folder))
    prompt = "The while statement"
    text = generator(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)[0]["generated_text"]

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AlbertAGPTForCausalLM.from_pretrained(model_folder)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert output.shape[1] == inputs.input_ids.shape[1] + 12
    assert text == tokenizer.decode(output[0], skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_batched_pipeline_with_left_padding_matches_single_prompts(model_folder: Path) -> None:
    generator = pipeline("text-generation", model=str(model_folder))
    generator.tokenizer.padding_side = "left"
    prompts = ["Exceptions", "A class definition defines"]
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    batched = generator(prompts, batch_size=2, **kwargs)
    single = [generator(prompt, **kwargs) for prompt in prompts]
    assert [b[0]["generated_text"] for b in batched] == [s[0]["generated_text"] for s in single]
