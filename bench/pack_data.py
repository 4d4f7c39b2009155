"""A real instruction + conversation mix from ../shared/data as canonical records (for pack benches and tests).

The project's ingest readers are built in parallel with the packer; this loader reads only the
few files the packing benchmarks need, with `curator.record.make_record`, so the benches do not
depend on them. Categories: math (GSM8K), code (Code Alpaca, test-only license: read, never copied),
general (LLaMA-Factory Alpaca demo), self_instruct, tool_use (Glaive tool-call ShareGPT with tool
definitions, calls and results), chat (FastChat ShareGPT and LLaMA-Factory messages).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curator.record import Record, make_record, message, to_table

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _pair(instruction: str, inp: str, output: str) -> list[dict[str, Any]]:
    user = f"{instruction}\n\n{inp}" if inp else instruction
    return [message("user", user), message("assistant", output)]


def _sharegpt(turns: list[dict[str, str]]) -> list[dict[str, Any]]:
    """ShareGPT turns (human/gpt/function_call/observation) as canonical messages with tool calls."""
    out: list[dict[str, Any]] = []
    for t in turns:
        kind, value = t["from"], t["value"]
        if kind == "human":
            out.append(message("user", value))
        elif kind == "gpt":
            out.append(message("assistant", value))
        elif kind == "function_call":
            call = json.loads(value)
            args = json.dumps(call.get("arguments", {}), ensure_ascii=False)
            out.append(message("assistant", "", tool_calls=[{"id": None, "name": call["name"], "arguments": args}]))
        elif kind == "observation":
            out.append(message("tool", value))
    return out


def load_real_mix(shared: Path = SHARED, per_source: int | None = None) -> list[Record]:
    """Canonical records from six real sources (at most `per_source` from each), in file order."""
    recs: list[Record] = []

    def add(msgs: list[dict[str, Any]], file: str, i: int, category: str, tools: str | None = None) -> None:
        src = {"file": file, "index": i, "format": "bench"}
        recs.append(make_record(msgs, source=src, category=category, tools=tools))

    inst = shared / "instruct"
    for i, line in enumerate((inst / "gsm8k_train.jsonl").read_text(encoding="utf-8").split("\n")[:per_source]):
        if line.strip():
            row = json.loads(line)
            add(_pair(row["question"], "", row["answer"]), "gsm8k_train.jsonl", i, "math")
    for name, cat in (("code_alpaca_2k.json", "code"), ("llamafactory_alpaca_en_demo.json", "general")):
        for i, row in enumerate(json.loads((inst / name).read_text(encoding="utf-8"))[:per_source]):
            add(_pair(row["instruction"], row.get("input", ""), row["output"]), name, i, cat)
    name = "self_instruct_user_oriented_instructions.jsonl"
    for i, line in enumerate((inst / name).read_text(encoding="utf-8").split("\n")[:per_source]):
        if line.strip():
            row = json.loads(line)
            inst0 = row["instances"][0]
            add(_pair(row["instruction"], inst0.get("input", ""), inst0["output"]), name, i, "self_instruct")
    conv = shared / "conversations"
    name = "llamafactory_glaive_toolcall_en_demo_sharegpt.json"
    for i, row in enumerate(json.loads((conv / name).read_text(encoding="utf-8"))[:per_source]):
        tools = (
            json.dumps([{"type": "function", "function": f} for f in json.loads(row["tools"])])
            if row.get("tools")
            else None
        )
        add(_sharegpt(row["conversations"]), name, i, "tool_use", tools)
    name = "fastchat_dummy_conversation_sharegpt.json"
    for i, row in enumerate(json.loads((conv / name).read_text(encoding="utf-8"))[:per_source]):
        add(_sharegpt(row["conversations"]), name, i, "chat")
    name = "llamafactory_v1_sft_demo_messages.jsonl"
    for i, line in enumerate((conv / name).read_text(encoding="utf-8").split("\n")[:per_source]):
        if line.strip():
            row = json.loads(line)
            msgs = [
                message(m["role"], "".join(c.get("value", "") for c in m["content"] if c.get("type") == "text"))
                for m in row["messages"]
            ]
            add(msgs, name, i, "chat")
    return recs


def mix_table(shared: Path = SHARED, per_source: int | None = None) -> Any:
    """The real mix as an Arrow table with `RECORD_SCHEMA`, duplicates (same content id) removed."""
    seen: set[str] = set()
    unique = []
    for r in load_real_mix(shared, per_source):
        if r["id"] not in seen:
            seen.add(r["id"])
            unique.append(r)
    return to_table(unique)
