"""Generation metrics on real-looking answers (GSM8K, tool calls, free text) and the standard errors."""

from __future__ import annotations

import math

import pytest

from trainer.metrics import (
    chrf,
    final_number,
    parse_tool_call,
    reference_of,
    score_answer,
    summarise_generations,
    weighted_mean_se,
)

GSM8K_REF = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
             "in April and May.\n#### 72")


def test_gsm8k_final_number_exact_match() -> None:
    assert final_number(GSM8K_REF) == "72"
    assert final_number("She earns $1,200 a month, so 1,200 * 12 = 14,400 dollars a year.") == "14400"
    assert final_number("#### 3.50") == "3.5"
    assert final_number("no numbers here") is None
    right = score_answer("final_number", "In May she sold 24, so 48 + 24 = 72 clips.", GSM8K_REF)
    wrong = score_answer("final_number", "She sold 48 + 24 = 70 clips.\n#### 70", GSM8K_REF)
    none = score_answer("final_number", "I cannot tell.", GSM8K_REF)
    assert (right["exact_match"], wrong["exact_match"], none["exact_match"]) == (1.0, 0.0, 0.0)


def test_tool_calls_valid_json_and_function_name() -> None:
    message = {"role": "assistant", "content": "", "tool_calls": [
        {"name": "get_exchange_rate", "arguments": '{"base_currency": "USD", "target_currency": "EUR"}'}]}
    kind, ref, name = reference_of(message)
    assert kind == "tool_call" and name == "get_exchange_rate" and '"base_currency": "USD"' in ref
    hermes = '<tool_call>\n{"name": "get_exchange_rate", "arguments": {"base_currency": "USD"}}\n</tool_call>'
    bare = 'Sure! {"name": "convert_currency", "arguments": {"amount": 100}}'
    broken = '<tool_call>\n{"name": "get_exchange_rate", "arguments": {"base_currency": "USD"\n</tool_call>'
    prose = "The exchange rate from USD to EUR is about 0.92."
    assert score_answer(kind, hermes, ref, name) | {"chrf": 0} == {
        "kind": "tool_call", "chrf": 0, "valid_json": 1.0, "right_name": 1.0}
    assert (score_answer(kind, bare, ref, name)["valid_json"], score_answer(kind, bare, ref, name)["right_name"]) == (
        1.0, 0.0)
    assert score_answer(kind, broken, ref, name)["valid_json"] == 0.0
    assert score_answer(kind, prose, ref, name)["valid_json"] == 0.0
    openai_style = '{"type": "function", "function": {"name": "get_exchange_rate", "arguments": "{}"}}'
    assert parse_tool_call(openai_style)["name"] == "get_exchange_rate"


def test_chrf_orders_answers_by_closeness() -> None:
    ref = "Photosynthesis converts light energy into chemical energy stored in glucose."
    assert chrf(ref, ref) == pytest.approx(1.0)
    close = chrf("Photosynthesis turns light energy into chemical energy in glucose.", ref)
    far = chrf("The capital of France is Paris.", ref)
    assert 1.0 > close > far >= 0.0
    assert reference_of({"role": "assistant", "content": ref})[0] == "text"
    assert reference_of({"role": "assistant", "content": GSM8K_REF})[0] == "final_number"


def test_weighted_standard_error() -> None:
    mean, se, n = weighted_mean_se([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert se == pytest.approx(math.sqrt(sum((x - 2.5) ** 2 for x in [1, 2, 3, 4]) / 3) / 2)  # s / sqrt(n)
    # token weights: the mean is sum(loss * tokens) / sum(tokens), as per-category eval loss is
    mean_w, se_w, _ = weighted_mean_se([1.0, 3.0], [30, 10])
    assert mean_w == pytest.approx(1.5) and se_w > 0
    assert weighted_mean_se([2.0])[1] == math.inf and weighted_mean_se([])[2] == 0


def test_generation_summary_per_category() -> None:
    rows = {
        "a": {"category": "math", "kind": "final_number", "chrf": 0.4, "exact_match": 1.0},
        "b": {"category": "math", "kind": "final_number", "chrf": 0.2, "exact_match": 0.0},
        "c": {"category": "tool_use", "kind": "tool_call", "chrf": 0.5, "valid_json": 1.0, "right_name": 0.0},
    }
    summary = summarise_generations(rows)
    assert summary["math"]["n"] == 2 and summary["math"]["exact_match"] == 0.5
    assert summary["math"]["exact_match_se"] == pytest.approx(0.5)
    assert "valid_json" not in summary["math"] and summary["tool_use"]["chrf_se"] is None
