import os

import pytest
from helpers import reset_accelerate_state

# Tests never reach the Hub: everything is built from configs and trained locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def fresh_accelerate_state():
    """Each in-process training run builds its own Accelerator (mixed precision, accumulation), as a script would."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
