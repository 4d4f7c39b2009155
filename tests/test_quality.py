"""Normalize, quality signals and language on real-looking records, and the rules that read them."""

from __future__ import annotations

import polars as pl

from curator.config import QualityConfig
from curator.record import make_record, to_table
from curator.steps.base import decide
from curator.steps.normalize import Normalize, normalize_text
from curator.steps.quality import Language, Quality


def _frame(conversations: list[list[tuple[str, str]]], context: str | None = None) -> pl.DataFrame:
    recs = [
        make_record([{"role": r, "content": c} for r, c in conv], context=context,
                    source={"file": "t.jsonl", "index": i, "format": "openai"})
        for i, conv in enumerate(conversations)
    ]
    return pl.from_arrow(to_table(recs))


def test_normalize_repairs_mojibake_and_hidden_characters_but_keeps_code_indentation() -> None:
    code = "def f(x):\r\n    return x  # ok"
    frame = _frame([[("user", "Le cafÃ© est prÃªt ?\u200b"), ("assistant", code)]], context="\ufeffPassage\r\n")
    out = Normalize()(frame)
    msgs = out["messages"].to_list()[0]
    assert msgs[0]["content"] == "Le café est prêt ?"
    assert msgs[1]["content"] == "def f(x):\n    return x  # ok"
    assert out["context"].to_list() == ["Passage"]
    assert normalize_text("  â€œquotedâ€\x9d  ") == "“quoted”"


def test_signals_and_rules_on_typical_bad_answers() -> None:
    looping = "\n".join(["Step 1: add the flour and stir well."] * 8)
    frame = _frame([
        [("user", "What is 12 * 7?"), ("assistant", "12 * 7 = 84, because 10 * 7 = 70 and 2 * 7 = 14.")],
        [("user", "Write me a poem about my neighbour."), ("assistant", "As an AI language model, I cannot do that.")],
        [("user", "Give me a bread recipe."), ("assistant", looping)],
        [("user", "   "), ("assistant", "You did not ask anything.")],
        [("system", "You are terse.")],
    ])
    cfg = QualityConfig()
    quality = Quality(cfg)
    out = decide(quality(frame), quality.rules())
    expected = [None, "refusal_boilerplate", "repetitive", "empty_turn", "no_assistant_turn"]
    assert out["drop_reason"].to_list() == expected
    assert out["repetition"][2] > 0.8 and out["repetition"][0] == 0.0
    assert out["quality_score"][0] > out["quality_score"][1]
    # thresholds live only in the rules: a looser config keeps the looping answer without recomputing
    loose = Quality(QualityConfig(max_repetition=0.95, drop_refusals=False))
    assert decide(quality(frame), loose.rules())["drop_reason"].to_list()[:3] == [None, None, None]


def test_tool_call_turns_are_not_trivial_answers() -> None:
    recs = [make_record(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "name": "weather", "arguments": "{}"}]},
            {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "1"},
            {"role": "assistant", "content": "It is 21 °C in Paris."},
        ],
        source={"file": "t.jsonl", "index": 0, "format": "openai"},
    )]
    quality = Quality(QualityConfig(min_assistant_chars=5))
    out = decide(quality(pl.from_arrow(to_table(recs))), quality.rules())
    assert out["drop_reason"].to_list() == [None]
    assert out["n_tool_turns"].to_list() == [1] and out["min_assistant_chars"].to_list() == [21]


def test_language_detection_and_selection() -> None:
    frame = _frame([
        [("user", "Bonjour, pouvez-vous m'aider à écrire une lettre ?"), ("assistant", "Bien sûr, voici une lettre.")],
        [("user", "WHAT IS THE CAPITAL OF FRANCE?"), ("assistant", "PARIS IS THE CAPITAL.")],
        [("user", "请介绍一下北京的历史和文化。"), ("assistant", "北京是中国的首都，有三千多年的历史。")],
        [("user", "🙂🙂🙂"), ("assistant", "👍")],
    ])
    step = Language(QualityConfig(languages=["en"]))
    out = decide(step(frame), step.rules())
    assert out["language"].to_list() == ["fr", "en", "zh", None]
    assert out["drop_reason"].to_list() == ["language_not_selected", None, "language_not_selected",
                                            "language_not_selected"]


def test_names_and_addresses_do_not_decide_the_language() -> None:
    """Foreign names made short English turns read as Polish or Danish, which cost them NER in the PII step."""
    frame = _frame([
        [("user", "I'm Sylwia. Deszcz is my last name. Can you spell Sylwia Deszcz in NATO alphabet?"),
         ("assistant", "Sure, Sylwia Deszcz: ...")],
        [("user", "how do i wire money to DK5000400440116243? recipient Frode Hermansen, "
                  "Bådehavnsstræde 5, 8752 Asperup"),
         ("assistant", "Give your bank the IBAN and the name Frode Hermansen.")],
        [("user", "Ich bin in der Stadt, was machst du so? Der Hund von Peter Müller ist krank."),
         ("assistant", "Wir fahren nach Berlin, München und Köln.")],
        [("user", "Magdalena Wiśniewska, Krzysztof Wójcik"), ("assistant", "Grzegorz Szymański")],
    ])
    step = Language(QualityConfig())
    assert step(frame)["language"].to_list() == ["en", "en", "de", "pl"]
