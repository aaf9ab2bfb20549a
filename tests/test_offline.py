"""Converting a packaged GGUF file into a cached checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from serac import offline

gguf = pytest.importorskip("gguf", reason="pip install gguf")

_TOKENS = ["<|endoftext|>", "a", "b", "c", "d", "ab", "cd", "Ġ", "Ġa", *(f"t{i}" for i in range(23))]


def _write_tiny_llama_gguf(path) -> dict[str, np.ndarray]:
    """A two-block Llama with a byte-pair tokenizer, float32 tensors; returns them by GGUF name."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_dimension_count(8)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(_TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(_TOKENS)
    writer.add_token_types([1] * len(_TOKENS))
    writer.add_token_merges(["a b", "c d", "Ġ a"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(_TOKENS), 16), "output_norm.weight": (16,)}
    for block in range(2):
        shapes |= {
            f"blk.{block}.attn_norm.weight": (16,),
            f"blk.{block}.ffn_norm.weight": (16,),
            f"blk.{block}.attn_q.weight": (16, 16),
            f"blk.{block}.attn_k.weight": (8, 16),
            f"blk.{block}.attn_v.weight": (8, 16),
            f"blk.{block}.attn_output.weight": (16, 16),
            f"blk.{block}.ffn_gate.weight": (32, 16),
            f"blk.{block}.ffn_up.weight": (32, 16),
            f"blk.{block}.ffn_down.weight": (16, 32),
        }
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_a_gguf_file_is_read_once_and_converted_quietly_when_bars_are_off(tmp_path, monkeypatch, capsys):
    import transformers

    tensors = _write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    opened = []
    reader_init = gguf.GGUFReader.__init__

    def counting_init(self, path, *args, **kwargs):
        opened.append(path)
        reader_init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counting_init)
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    transformers.utils.logging.disable_progress_bar()
    try:
        offline._convert_gguf(tmp_path, "tiny.gguf", tmp_path / "checkpoint")
    finally:
        transformers.utils.logging.enable_progress_bar()

    # The tokenizer's config, the model's config and the weights were all read from one parse of the file.
    assert len(opened) == 1
    assert "de-quantizing" not in capsys.readouterr().err  # transformers' bars were switched off
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)  # put back
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint")
    assert np.array_equal(model.model.embed_tokens.weight.detach().numpy(), tensors["token_embd.weight"])
    down = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    assert np.array_equal(down, tensors["blk.1.ffn_down.weight"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "checkpoint")
    assert tokenizer.convert_ids_to_tokens(tokenizer("ab cd")["input_ids"]) == ["ab", "Ġ", "cd"]
