"""Chat rendering and loss masks on real records: assistant turns only, end-of-turn trainable, verified."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from curator.config import FormatConfig
from curator.format.chat import CHATML_TEMPLATE, ChatFormatter, Encoded, Rejected, load_tokenizer
from curator.record import make_record, message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from pack_data import load_real_mix

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def real_records(shared_data: Path) -> list[dict]:
    return load_real_mix(shared_data, per_source=25)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: Path):
    return load_tokenizer(tiny_tokenizer_dir)[0]


def _segments(enc: Encoded) -> list[tuple[int, int]]:
    """Contiguous runs of target tokens."""
    m = np.r_[0, enc.loss_mask, 0]
    edges = np.flatnonzero(np.diff(m))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _expected_target(msg: dict) -> str:
    """What the ChatML template renders for an assistant turn, up to and including <|im_end|>."""
    text = msg["content"]
    for i, call in enumerate(msg.get("tool_calls") or []):
        sep = "\n" if (text or i) else ""
        text += f'{sep}<tool_call>\n{{"name": "{call["name"]}", "arguments": {call["arguments"]}}}\n</tool_call>'
    return text + "<|im_end|>"


def test_mask_covers_exactly_the_assistant_turns(tok, real_records: list[dict]) -> None:
    fmt = ChatFormatter(tok, FormatConfig(seq_len=4096))
    checked_tool_calls = 0
    for rec in real_records:
        enc = fmt.encode(rec)
        assert isinstance(enc, Encoded), (rec["id"], enc)
        assert enc.method == "prefix"
        assistants = [m for m in rec["messages"] if m["role"] == "assistant"]
        segments = _segments(enc)
        assert len(segments) == len(assistants)
        for (s, e), msg in zip(segments, assistants, strict=True):
            assert tok.decode(enc.input_ids[s:e].tolist()) == _expected_target(msg)
            assert enc.input_ids[e - 1] == tok.convert_tokens_to_ids("<|im_end|>")
            checked_tool_calls += bool(msg["tool_calls"])
        context = tok.decode(enc.input_ids[enc.loss_mask == 0].tolist())
        for m in rec["messages"]:
            if m["role"] == "user":
                assert m["content"] in context
    assert checked_tool_calls > 0, "the mix must exercise tool-call turns"
    assert fmt.stats.methods == {"prefix": len(real_records)}


def test_last_assistant_only(tok, real_records: list[dict]) -> None:
    fmt = ChatFormatter(tok, FormatConfig(seq_len=4096, train_on="last_assistant"))
    multi = [r for r in real_records if sum(m["role"] == "assistant" for m in r["messages"]) > 1]
    assert multi
    for rec in multi:
        enc = fmt.encode(rec)
        (s, e), last = _segments(enc)[0], rec["messages"][-1]
        assert len(_segments(enc)) == 1
        assert tok.decode(enc.input_ids[s:e].tolist()) == _expected_target(last)


def test_eos_stays_trainable_when_pad_is_eos(
    tiny_tokenizer_dir: Path, tmp_path: Path, real_records: list[dict]
) -> None:
    t = AutoTokenizer.from_pretrained(tiny_tokenizer_dir, local_files_only=True)
    t.pad_token = t.eos_token
    t.save_pretrained(tmp_path)
    tok, _ = load_tokenizer(tmp_path)
    assert tok.pad_token_id == tok.eos_token_id
    fmt = ChatFormatter(tok, FormatConfig(seq_len=4096))
    enc = fmt.encode(real_records[0])
    eos_positions = np.flatnonzero(enc.input_ids == tok.eos_token_id)
    assistant_ends = [e - 1 for _, e in _segments(enc)]
    assert set(assistant_ends) <= set(eos_positions.tolist())
    assert enc.loss_mask[assistant_ends].all()


def test_builtin_chatml_when_tokenizer_has_no_template(
    tiny_tokenizer_dir: Path, tmp_path: Path, real_records: list[dict]
) -> None:
    t = AutoTokenizer.from_pretrained(tiny_tokenizer_dir, local_files_only=True)
    t.chat_template = None
    t.save_pretrained(tmp_path)
    for f in tmp_path.glob("chat_template.*"):
        f.unlink()
    bare, source = load_tokenizer(tmp_path)
    assert source == "builtin_chatml" and bare.chat_template == CHATML_TEMPLATE
    with_template, _ = load_tokenizer(tiny_tokenizer_dir)
    a = ChatFormatter(bare, FormatConfig()).encode(real_records[3])
    b = ChatFormatter(with_template, FormatConfig()).encode(real_records[3])
    assert a.input_ids.tolist() == b.input_ids.tolist() and a.loss_mask.tolist() == b.loss_mask.tolist()


def test_template_that_is_not_prefix_stable_falls_back_to_search(tok, real_records: list[dict]) -> None:
    # A header that counts the turns changes with every prefix, as date or turn-count headers do.
    unstable = "{{ messages | length }} turns\n" + CHATML_TEMPLATE
    tok2 = load_tokenizer(Path(tok.name_or_path))[0]
    tok2.chat_template = unstable
    fmt = ChatFormatter(tok2, FormatConfig(seq_len=4096))
    plain = [r for r in real_records if not any(m["tool_calls"] for m in r["messages"])][:10]
    for rec in plain:
        enc = fmt.encode(rec)
        assert enc.method == "search"
        assistants = [m for m in rec["messages"] if m["role"] == "assistant"]
        for (s, e), msg in zip(_segments(enc), assistants, strict=True):
            assert tok2.decode(enc.input_ids[s:e].tolist()).strip() == _expected_target(msg).strip()
    assert fmt.stats.methods["search"] == len(plain)


def test_overlong_truncates_whole_turns_or_drops(tok, real_records: list[dict]) -> None:
    rec = max(real_records, key=lambda r: len(r["messages"]))
    full = ChatFormatter(tok, FormatConfig(seq_len=8192)).encode(rec)
    first_end = _segments(full)[0][1]
    seq_len = max(16, (first_end + len(full.input_ids)) // 2)
    fmt = ChatFormatter(tok, FormatConfig(seq_len=seq_len))
    enc = fmt.encode(rec)
    assert isinstance(enc, Encoded) and enc.truncated_turns > 0
    assert len(enc.input_ids) <= seq_len
    assert enc.input_ids.tolist() == full.input_ids[: len(enc.input_ids)].tolist()
    assert enc.input_ids[_segments(enc)[-1][1] - 1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert fmt.stats.truncated_records == 1
    drop = ChatFormatter(tok, FormatConfig(seq_len=seq_len, overlong="drop"))
    assert isinstance(drop.encode(rec), Rejected) and drop.stats.dropped == {"overlong": 1}


def test_records_without_assistant_turn_are_counted(tok) -> None:
    rec = make_record([message("user", "Is anyone there?")], source={"file": "x", "index": 0, "format": "t"})
    fmt = ChatFormatter(tok, FormatConfig())
    out = fmt.encode(rec)
    assert isinstance(out, Rejected) and out.reason == "no_assistant_turn"
    assert fmt.stats.dropped == {"no_assistant_turn": 1}


def test_context_goes_into_the_first_user_turn(tok) -> None:
    rec = make_record(
        [message("user", "Summarise the passage."), message("assistant", "It is about bees.")],
        source={"file": "dolly.jsonl", "index": 0, "format": "t"},
        context="Bees make honey from nectar.",
    )
    enc = ChatFormatter(tok, FormatConfig()).encode(rec)
    prompt = tok.decode(enc.input_ids[enc.loss_mask == 0].tolist())
    assert "Summarise the passage.\n\nBees make honey from nectar." in prompt
