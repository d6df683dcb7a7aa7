"""Shared test helpers: tiny configs, and loading a saved folder the way a Hub user without the package would."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState

from albertagpt import AlbertAGPTConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


# Sizes of the tiny models the tests build (AlbertAGPT, and ALBERT for the conversion tests): two shared groups,
# each applied twice.
TINY_SIZES = dict(
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=4,
    num_hidden_groups=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def tiny_config(**overrides) -> AlbertAGPTConfig:
    """A model small enough for a unit test; override any field."""
    return AlbertAGPTConfig(**{"vocab_size": 97, **TINY_SIZES, **overrides})


def make_hub_snapshot(folder: Path, cache_dir: Path, repo_id: str) -> Path:
    """Lay `folder` out as `huggingface_hub` caches a download of `repo_id`, and return the snapshot path."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_cache / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)
    return snapshot


def run_without_package(code: str, hub_cache: Path, workdir: Path) -> dict:
    """Run `code` in a fresh interpreter where `import albertagpt` fails and the Hub is offline.

    The code must `print(json.dumps(result))` as its last line; that result is returned.
    """
    preamble = (
        "import sys, json\n"
        "sys.modules['albertagpt'] = None  # the package is installed here; make it unimportable\n"
        "try:\n"
        "    import albertagpt\n"
        "    raise SystemExit('albertagpt is importable')\n"
        "except ImportError:\n"
        "    pass\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HOME": str(workdir / "hf_home"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    completed = subprocess.run(
        [sys.executable, "-c", preamble + code],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def reset_accelerate_state() -> None:
    """Forget the process-wide Accelerate state, so the next in-process run starts as a fresh script would."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def subprocess_env(tmp_path: Path) -> dict:
    # Own HF_HOME: no user Accelerate config applies, and the datasets cache is private to the test.
    return {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(script: str, *args: str, tmp_path: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node processes script args` from the repository root (CPU, gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--master_port", str(free_port()), script, *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True)
