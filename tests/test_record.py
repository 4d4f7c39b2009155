"""The canonical record: content ids, and the fast check held in agreement with the JSON Schema."""

from __future__ import annotations

import copy
import random

import pytest

from curator.record import is_valid_record, make_record, record_id, schema_errors


def _record(i: int = 0) -> dict:
    return make_record(
        [
            {"role": "system", "content": "You are a helpful pirate assistant."},
            {"role": "user", "content": f"Can I play PC games on my Xbox? ({i})"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "call_1", "name": "search_games", "arguments": '{"platform": "xbox"}'}],
            },
            {"role": "tool", "content": '{"games": ["Halo"]}', "tool_call_id": "call_1", "name": "search_games"},
            {"role": "assistant", "content": "Arrr, Halo be one of them!"},
        ],
        source={"file": "pirate.jsonl", "index": i, "line": i + 1, "format": "openai"},
        context=None,
        category="games",
        meta={"title": "xbox"},
    )


def test_id_is_content_derived_and_ignores_source() -> None:
    a, b = _record(0), _record(0)
    b["source"]["file"] = "elsewhere.jsonl"
    assert a["id"] == record_id(a["messages"])
    assert a["id"] == make_record(a["messages"], source=b["source"])["id"]
    assert a["id"] != _record(1)["id"]


def test_made_records_pass_both_checks() -> None:
    rec = _record()
    assert is_valid_record(rec)
    assert schema_errors(rec) == []


MUTATIONS = [
    lambda r: r["messages"][0].__setitem__("role", "bot"),
    lambda r: r["messages"][1].__setitem__("content", 5),
    lambda r: r["messages"][1].__setitem__("content", None),
    lambda r: r.__setitem__("messages", []),
    lambda r: r.__setitem__("messages", {"role": "user"}),
    lambda r: r.__setitem__("id", "XYZ"),
    lambda r: r.__setitem__("id", r["id"][:10]),
    lambda r: r["source"].__setitem__("index", -1),
    lambda r: r["source"].__setitem__("line", 0),
    lambda r: r["source"].pop("file"),
    lambda r: r.__setitem__("category", 3),
    lambda r: r.__setitem__("surprise", 1),
    lambda r: r["messages"][2]["tool_calls"][0].__setitem__("arguments", {"platform": "xbox"}),
    lambda r: r["messages"][2]["tool_calls"][0].pop("name"),
    lambda r: r["messages"][2].__setitem__("tool_calls", "search"),
    lambda r: r["messages"][3].__setitem__("extra", True),
    lambda r: r.pop("messages"),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_fast_check_agrees_with_schema_on_each_violation(mutate) -> None:
    rec = copy.deepcopy(_record())
    mutate(rec)
    assert schema_errors(rec), "the mutation should violate the schema"
    assert not is_valid_record(rec)


def test_fast_check_agrees_with_schema_on_random_mutations() -> None:
    rng = random.Random(7)
    values = [None, 0, -1, 1.5, "", "user", "x" * 24, [], {}, True, "0123456789abcdef01234567"]
    for _ in range(400):
        rec = copy.deepcopy(_record())
        target = rng.choice([rec, rec["source"], *rec["messages"], rec["messages"][2]["tool_calls"][0]])
        key = rng.choice([*sorted(target), "new_key"])
        target[key] = rng.choice(values)
        assert is_valid_record(rec) == (schema_errors(rec) == []), (key, target.get(key))
