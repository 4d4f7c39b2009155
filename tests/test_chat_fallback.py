"""A chat template that drops content of a record (tool calls, tool results, tool schemas, names) is
caught, the record rendered with the project's ChatML-with-tools template instead and counted; it is
never trained on silently. Records: the glaive tool-calling sample and the ChatGPT export of sample_data/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curator.config import CurateConfig, FormatConfig
from curator.format import build_shards
from curator.format.chat import ChatFormatter, Encoded, Rejected, load_tokenizer
from curator.format.shards import summary_rows
from curator.ingest import read_input
from curator.ingest.base import Quarantined, ReaderOptions
from curator.record import make_record, message, to_table

# A template that knows only role and content, as many do.
MINIMAL = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _read(path: Path) -> list[dict]:
    return [r for r in read_input(path, path.name, None, ReaderOptions()) if not isinstance(r, Quarantined)]


@pytest.fixture(scope="module")
def glaive(sample_dir: Path) -> list[dict]:
    return _read(sample_dir / "glaive_toolcall_100_sharegpt.json")


@pytest.fixture(scope="module")
def chatml_tok(tiny_tokenizer_dir: Path):
    return load_tokenizer(tiny_tokenizer_dir)[0]


@pytest.fixture
def minimal_tok(tiny_tokenizer_dir: Path):
    tok = load_tokenizer(tiny_tokenizer_dir)[0]
    tok.chat_template = MINIMAL
    return tok


def _calls(rec: dict) -> list[dict]:
    return [c for m in rec["messages"] for c in m.get("tool_calls") or []]


def _has_tools(rec: dict) -> bool:
    return bool(rec.get("tools") and json.loads(rec["tools"]))


def test_template_ignoring_tools_falls_back_to_chatml_with_tools(minimal_tok, chatml_tok, glaive) -> None:
    fmt = ChatFormatter(minimal_tok, FormatConfig(seq_len=4096))
    reference = ChatFormatter(chatml_tok, FormatConfig(seq_len=4096))
    n_calls = n_schemas = n_plain = 0
    for rec in glaive:
        enc, ref = fmt.encode(rec), reference.encode(rec)
        assert isinstance(enc, Encoded), (rec["id"], enc)
        expected = {k for k, hit in (("tool_calls", _calls(rec)), ("tool_schemas", _has_tools(rec))) if hit}
        assert set(enc.template_fallback) == expected
        if expected:  # rendered exactly as the ChatML-with-tools template renders it, mask verified the same way
            assert enc.input_ids.tolist() == ref.input_ids.tolist() and enc.loss_mask.tolist() == ref.loss_mask.tolist()
            assert enc.method == "prefix"
        else:
            n_plain += 1
            text = minimal_tok.decode(enc.input_ids.tolist())
            assert text == minimal_tok.apply_chat_template(
                [{"role": m["role"], "content": m["content"] or ""} for m in rec["messages"]], tokenize=False)
        n_calls += "tool_calls" in expected
        n_schemas += "tool_schemas" in expected
    assert n_calls > 20 and n_schemas > 20 and n_plain > 0
    stats = fmt.stats.as_dict()["template_fallback"]
    assert stats["template"] == "chatml_tools" and stats["records"] == len(glaive) - n_plain
    assert stats["by_reason"] == {"tool_calls": n_calls, "tool_schemas": n_schemas}


def test_every_tool_call_is_a_target_after_the_fallback(minimal_tok, glaive) -> None:
    fmt = ChatFormatter(minimal_tok, FormatConfig(seq_len=4096))
    for rec in [r for r in glaive if _calls(r)]:
        enc = fmt.encode(rec)
        target = minimal_tok.decode(enc.input_ids[enc.loss_mask == 1].tolist())
        for call in _calls(rec):
            assert f'"name": "{call["name"]}"' in target
            for key in json.loads(call["arguments"]):
                assert f'"{key}"' in target


def test_speaker_names_are_content_the_template_must_carry(minimal_tok, chatml_tok) -> None:
    rec = make_record(
        [message("user", "Plot y = x^2."), message("assistant", "Running it."),
         message("tool", "<figure: parabola>", name="python"), message("assistant", "Here is the plot.")],
        source={"file": "chatgpt.json", "index": 0, "format": "chatgpt"},
    )
    enc = ChatFormatter(minimal_tok, FormatConfig()).encode(rec)
    assert enc.template_fallback == ("names",)
    assert "<|im_start|>tool name=python\n<figure: parabola><|im_end|>" in minimal_tok.decode(enc.input_ids.tolist())
    assert ChatFormatter(chatml_tok, FormatConfig()).encode(rec).template_fallback == ()


def test_without_chatml_tokens_a_dropping_render_is_a_counted_drop(tmp_path: Path, glaive) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [m["content"] or "" for r in glaive[:30] for m in r["messages"]]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '</s>' }}{% endfor %}"
    tok.save_pretrained(tmp_path)
    fmt = ChatFormatter(load_tokenizer(tmp_path)[0], FormatConfig(seq_len=8192))
    assert fmt.fallback_template is None  # ChatML markup would be plain text to this tokenizer
    results = [fmt.encode(r) for r in glaive]
    dropped = [r for r in results if isinstance(r, Rejected)]
    assert {r.reason for r in dropped} == {"template_drops_content"}
    assert len(dropped) == sum(bool(_calls(r) or _has_tools(r)) for r in glaive) > 0
    assert fmt.stats.dropped == {"template_drops_content": len(dropped)}
    assert fmt.stats.as_dict()["template_fallback"]["records"] == 0


def test_smollm2_template_drops_tools_and_the_fallback_keeps_them(smollm2_dir: Path, glaive) -> None:
    tok, source = load_tokenizer(smollm2_dir)
    assert source == "tokenizer"  # SmolLM2's own ChatML template, which ignores tools and tool_calls
    fmt = ChatFormatter(tok, FormatConfig(seq_len=4096))
    for rec in glaive:
        enc = fmt.encode(rec)
        assert isinstance(enc, Encoded) and enc.method == "prefix"
        text = tok.decode(enc.input_ids.tolist())
        if _calls(rec) or _has_tools(rec):
            assert enc.template_fallback
            assert ("<tools>" in text) == _has_tools(rec)
            target = tok.decode(enc.input_ids[enc.loss_mask == 1].tolist())
            assert all(c["name"] in target for c in _calls(rec))
        else:
            assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    by_reason = fmt.stats.as_dict()["template_fallback"]["by_reason"]
    assert by_reason["tool_calls"] == sum(bool(_calls(r)) for r in glaive)
    assert by_reason["tool_schemas"] == sum(_has_tools(r) for r in glaive)


def test_pack_manifest_and_report_count_the_fallback(tmp_path: Path, minimal_tok, glaive, sample_dir) -> None:
    tok_dir = tmp_path / "tok"
    minimal_tok.save_pretrained(tok_dir)
    math = _read(sample_dir / "gsm8k_train_400.jsonl")[:40]
    kept = pl.from_arrow(to_table(glaive + math))
    cfg = CurateConfig(format=FormatConfig(tokenizer=str(tok_dir), seq_len=4096))
    manifest = build_shards(kept, tmp_path / "shards", cfg, progress=False)  # validates the manifest schema
    assert manifest["format"]["dropped"] == {}
    fallback = manifest["format"]["template_fallback"]
    tool_records = len({r["id"] for r in glaive if _calls(r) or _has_tools(r)})  # the packer drops repeated ids
    assert fallback["records"] == tool_records > 0
    assert fallback["template_hash"] != manifest["tokenizer"]["chat_template_hash"]
    rows = dict(summary_rows(manifest))
    assert rows["rendered with ChatML-with-tools (own template drops)"].startswith(f"{tool_records} records")
    # the shards hold the fallback renders: every tool call of a packed tool record is in some train/eval row
    ids = np.concatenate([np.asarray(r) for f in (tmp_path / "shards").rglob("part-*.parquet")
                          for r in pl.read_parquet(f)["input_ids"].to_list()])
    assert minimal_tok.convert_tokens_to_ids("<|im_start|>") in ids
    assert "<tool_call>" in minimal_tok.decode(ids.tolist())


def test_ifd_scoring_renders_tool_calls_as_the_packer_does(smollm2_dir: Path, glaive) -> None:
    from transformers import AutoTokenizer

    from trainer.evaluate import _ifd_documents

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    rec = next(r for r in glaive if _calls(r) and _has_tools(r))
    upto = next(i for i, m in enumerate(rec["messages"]) if m.get("tool_calls"))
    scored = {**rec, "messages": rec["messages"][: upto + 1]}  # the answer scored is the tool-calling turn
    (cond_ids, cond_mask), _ = _ifd_documents(tok, scored, max_len=4096)[0]
    answer = tok.decode([i for i, m in zip(cond_ids, cond_mask, strict=True) if m])
    call = rec["messages"][upto]["tool_calls"][0]
    assert answer.startswith("<tool_call>") and f'"name": "{call["name"]}"' in answer  # not just <|im_end|>
    assert "<tools>" in tok.decode(cond_ids)
    packed = ChatFormatter(tok, FormatConfig(seq_len=4096, train_on="last_assistant")).encode(scored)
    assert packed.input_ids.tolist() == cond_ids  # same render, same tokens
    assert tok.decode(packed.input_ids[packed.loss_mask == 1].tolist()) == answer.removesuffix("\n")
