"""Shared fixtures: tiny models built from configs (no downloads) and the packaged MiniLM embedder."""

from __future__ import annotations

import os
import string

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)


def make_char_tokenizer(extra_symbols=()):
    """A character-level tokenizer: any printable ASCII text round-trips through it exactly.

    ``extra_symbols`` are appended to the vocabulary (a tokenizer that differs from the default one).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "<eos>", "<bos>", "<unk>", *string.printable[:95], *extra_symbols]
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def make_tiny_llama(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def make_tiny_t5(tokenizer, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="session")
def char_tokenizer():
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(char_tokenizer):
    return make_tiny_llama(char_tokenizer)


@pytest.fixture(scope="session")
def tiny_t5(char_tokenizer):
    return make_tiny_t5(char_tokenizer, seed=1)


@pytest.fixture(scope="session")
def embedder():
    from serac.offline import load_embedder

    return load_embedder()


def save_tiny_cross_encoder(directory) -> str:
    """A two-layer BERT cross-encoder with the packaged MiniLM tokenizer, saved like a hub checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from serac.offline import resolve_embedder

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedder())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory):
    return save_tiny_cross_encoder(tmp_path_factory.mktemp("tiny_cross_encoder"))


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session (skipped only when PostgreSQL is not installed)."""
    from .pg_server import find_postgres_bin, start_postgres

    if find_postgres_bin() is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) are not installed: apt-get install -y postgresql-15"
        )
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: pip install 'serac-memory[postgres]'")
    server = start_postgres()
    yield server
    server.stop()


# ---------------------------------------------------------------- tests write only in temporary folders
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What Python, pytest and an editable install leave behind are not test output.
_TOOL_OUTPUT = ("__pycache__", ".pytest_cache", ".ruff_cache", ".egg-info", ".coverage")
_SOURCE_FILES = (".py", ".pyc", ".md", ".toml", ".coverage")


def _repository_files() -> set[str]:
    found = set()
    for folder, subfolders, files in os.walk(_REPOSITORY):
        subfolders[:] = [name for name in subfolders if name != ".git" and not name.endswith(_TOOL_OUTPUT)]
        # Source files appear while someone edits the tree; a test's stray output is data (a database, a
        # snapshot, a log).
        found.update(os.path.join(folder, name) for name in files if not name.endswith(_SOURCE_FILES))
    return found


def pytest_sessionstart(session):
    session.config._files_before_tests = _repository_files()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_files_before_tests", None)
    if before is None or exitstatus != 0:
        return
    written = sorted(os.path.relpath(path, _REPOSITORY) for path in _repository_files() - before)
    if written:
        session.config.get_terminal_writer().line(
            f"tests wrote files into the repository instead of a temporary folder: {written}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
