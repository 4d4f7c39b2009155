"""Evaluation: per-sample losses equal an unpacked forward, chunking changes nothing, schema, IFD scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import sft_records

from trainer.cli import eval_main
from trainer.config import TrainConfig
from trainer.data import read_manifest, read_split
from trainer.evaluate import (
    eval_schema,
    evaluate_split,
    generate,
    generation_eval,
    length_batches,
    score_pool,
    write_eval,
)
from trainer.losses import TokenLoss
from trainer.model import load_base_model, resolve_runtime

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path, packed_shards: Path) -> tuple[TrainConfig, object]:
    torch.set_num_threads(1)
    cfg = TrainConfig(model=str(tiny_model_dir), shards=str(packed_shards), output_dir="unused")
    model = load_base_model(cfg, resolve_runtime(cfg))
    model.eval()
    return cfg, model


def _hf_loss(model: object, ids: list[int], labels: list[int]) -> float:
    """Mean next-token loss from transformers' own loss on one unpacked sequence."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), use_cache=False)
    return float(out.loss)


def test_per_sample_loss_equals_an_unpacked_forward(base: tuple, packed_shards: Path) -> None:
    _, model = base
    split = read_split(packed_shards, read_manifest(packed_shards), "eval")
    report = evaluate_split(TokenLoss(model), split, batch_size=3, chunk_tokens=16, device=CPU)
    expected_ids = sorted({sid for row in split.sample_ids for sid in row})
    assert sorted(report["per_sample"]) == expected_ids
    checked = 0
    for row in range(split.rows):
        start = 0
        for length, sid in zip(split.seq_lens[row], split.sample_ids[row], strict=True):
            ids = split.input_ids[row, start : start + length].tolist()
            mask = split.loss_mask[row, start : start + length].tolist()
            labels = [t if m == 1 else -100 for t, m in zip(ids, mask, strict=True)]
            assert report["per_sample"][sid]["loss"] == pytest.approx(_hf_loss(model, ids, labels), rel=1e-5)
            assert report["per_sample"][sid]["tokens"] == sum(mask[1:])
            start += length
            checked += 1
    assert checked == len(expected_ids) >= 8


def test_chunking_and_batching_do_not_change_results(base: tuple, packed_shards: Path) -> None:
    _, model = base
    split = read_split(packed_shards, read_manifest(packed_shards), "eval")
    small = evaluate_split(TokenLoss(model), split, batch_size=1, chunk_tokens=16, device=CPU)
    big = evaluate_split(TokenLoss(model), split, batch_size=8, chunk_tokens=4096, device=CPU)
    assert small["per_sample"].keys() == big["per_sample"].keys()
    for sid, v in small["per_sample"].items():
        assert v["loss"] == pytest.approx(big["per_sample"][sid]["loss"], rel=1e-5)


def test_categories_are_token_weighted_and_the_report_validates(
    base: tuple, packed_shards: Path, tmp_path: Path
) -> None:
    _, model = base
    split = read_split(packed_shards, read_manifest(packed_shards), "eval")
    report = evaluate_split(TokenLoss(model), split, batch_size=4, chunk_tokens=256, device=CPU)
    for cat, summary in report["per_category"].items():
        members = [v for v in report["per_sample"].values() if v["category"] == cat]
        tokens = sum(v["tokens"] for v in members)
        assert summary["tokens"] == tokens and summary["samples"] == len(members)
        assert summary["loss"] == pytest.approx(sum(v["loss"] * v["tokens"] for v in members) / tokens)
        assert summary["perplexity"] == pytest.approx(math.exp(summary["loss"]))
    assert sum(s["samples"] for s in report["per_category"].values()) == report["overall"]["samples"]
    path = write_eval(report, tmp_path / "eval.json")
    assert json.loads(path.read_text())["per_sample"] == report["per_sample"]
    broken = {k: v for k, v in report.items() if k != "overall"}
    with pytest.raises(jsonschema.ValidationError):
        write_eval(broken, tmp_path / "broken.json")


def test_eval_main_on_the_base_model_with_generation(base: tuple, tmp_path: Path) -> None:
    cfg, _ = base
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path), "cpu_threads": 1,
                                 "eval": cfg.eval.model_copy(update={"prompts": ["What is 2 + 3?"],
                                                                     "max_new_tokens": 4})})
    result = eval_main(cfg, adapter="none")
    report = json.loads(Path(result["eval"]).read_text())
    jsonschema.validate(report, eval_schema())
    assert Path(result["eval"]).name == "eval_base.json" and report["adapter"] is None
    assert report["generations"][0]["prompt"] == "What is 2 + 3?"
    assert isinstance(report["generations"][0]["completion"], str)


def test_score_pool_gives_conditional_and_answer_only_loss(base: tuple, tiny_model_dir: Path) -> None:
    _, model = base
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = sft_records(per_source=3)
    orphan = {"id": "no-answer", "messages": [{"role": "user", "content": "Hello?"}]}
    scores = {s["id"]: s for s in score_pool(model, tokenizer, [*records, orphan], max_len=512, batch_size=2)}
    assert scores["no-answer"]["skipped"] == "no assistant turn after a prompt"
    rec = records[0]
    got = scores[rec["id"]]
    assert got["ifd"] == pytest.approx(got["loss_cond"] / got["loss_alone"])
    msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
    prompt = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids
    labels = [-100] * len(p_ids) + f_ids[len(p_ids) :]
    assert got["loss_cond"] == pytest.approx(_hf_loss(model, f_ids, labels), rel=1e-5)
    assert got["tokens"] == len(f_ids) - len(p_ids)
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    alone = header + f_ids[len(p_ids) :]
    assert got["loss_alone"] == pytest.approx(_hf_loss(model, alone, [-100] * len(header) + alone[len(header):]),
                                              rel=1e-5)


def test_score_pool_over_shards_scores_every_train_record(base: tuple, packed_shards: Path) -> None:
    _, model = base
    split = read_split(packed_shards, read_manifest(packed_shards), "train")
    rows = score_pool(model, None, packed_shards, batch_size=4)
    assert [r["id"] for r in rows] == sorted({s for row in split.sample_ids for s in row})
    assert all(r["loss_cond"] > 0 and r["ifd"] is None for r in rows)


def test_batched_left_padded_generation_equals_one_at_a_time(base: tuple, tiny_model_dir: Path) -> None:
    _, model = base
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = ["What is 2 + 3?", "Write a haiku about the sea and the long grey winter evenings.", "Hi",
               "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."]
    one = generate(model, tokenizer, prompts, max_new_tokens=6, device=CPU, batch_size=1)
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, device=CPU, batch_size=3)
    by_tokens = generate(model, tokenizer, prompts, max_new_tokens=6, device=CPU, batch_size=4, batch_tokens=40)
    assert [g["prompt"] for g in batched] == prompts
    assert [g["completion"] for g in batched] == [g["completion"] for g in one]
    assert [g["completion"] for g in by_tokens] == [g["completion"] for g in one]


def test_long_prompts_go_in_smaller_generation_batches() -> None:
    # the demo's 12 answer prompts: two tool schemas of 809 and 597 tokens, the rest under 200
    lengths = [51, 178, 81, 89, 597, 123, 36, 809, 87, 95, 45, 37]
    batches = length_batches(lengths, batch_size=8, batch_tokens=2048)
    assert [[lengths[i] for i in b] for b in batches] == [[809, 597], [178, 123, 95, 89, 87, 81, 51, 45], [37, 36]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert length_batches([3000, 10], batch_size=8, batch_tokens=2048) == [[0], [1]]  # too long alone: its own batch
    assert length_batches([], batch_size=8, batch_tokens=2048) == []


def test_generation_eval_scores_each_record_by_the_kind_of_its_reference(base: tuple, tiny_model_dir: Path) -> None:
    _, model = base
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = sft_records(per_source=2)
    tool = {"id": "f" * 24, "category": "tool_use", "tools": json.dumps([{"name": "get_weather", "parameters": {}}]),
            "messages": [{"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": "", "tool_calls": [
                             {"name": "get_weather", "arguments": '{"city": "Paris"}'}]},
                         {"role": "tool", "content": '{"temp": 18}'},
                         {"role": "assistant", "content": "It is 18 degrees in Paris."}]}
    report = generation_eval(model, tokenizer, [*records, tool], max_new_tokens=4, device=CPU, batch_size=4)
    rows = report["per_sample"]
    assert len(rows) == len(records) + 1
    assert rows["f" * 24]["kind"] == "tool_call" and {"valid_json", "right_name"} <= set(rows["f" * 24])
    assert {rows[r["id"]]["kind"] for r in records if r["category"] == "math"} == {"final_number"}
    assert {rows[r["id"]]["kind"] for r in records if r["category"] == "general"} == {"text"}
    assert report["per_category"]["math"]["n"] == 2 and "exact_match" in report["per_category"]["math"]
