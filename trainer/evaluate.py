"""Evaluation at the granularity data selection needs: per sample, per category, overall.

`evaluate_split` streams the packed eval rows `batch_size` at a time, computes token losses in
chunks (losses.TokenLoss.per_token) and folds them into per-document sums right away, so memory
holds one batch of hidden states plus one chunk of logits, never vocabulary x dataset. Per-category
loss is token-weighted (total loss / total target tokens of the category); perplexity = exp(loss).

`generation_eval` answers eval records greedily (`generate_texts`: batched, left padded, longest
prompts first) and scores each answer against its reference with `trainer.metrics` (chrF, final
number, tool-call JSON and name), per record id and per category with standard errors.
`heldout_eval` is the forgetting check: the answer loss of records no round trains on. Both run
after the loss evaluation when the eval config names their record files (`extra_evals`).

`score_pool` is the feedback loop's scoring pass over the TRAINING pool: for canonical records it
renders each conversation with the model's chat template and returns, per record id,
loss(answer | prompt) and loss(answer alone) and IFD = their ratio (Li et al. 2023, "Cherry" data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import torch

from curator.format.chat import parse_tools, template_for, to_hf_messages
from trainer.data import PackedSplit, document_index, make_batch, read_manifest, read_split
from trainer.losses import TokenLoss
from trainer.metrics import score_answer, summarise_generations, weighted_mean_se

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "eval.schema.json"
SCHEMA_VERSION = 2


class EvalError(Exception):
    """Evaluation cannot run on this input; the message says what to do."""


@lru_cache(maxsize=1)
def eval_schema() -> dict[str, Any]:
    """The JSON Schema of `eval.json`."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def document_losses(
    loss_fn: TokenLoss, split: PackedSplit, batch_size: int, chunk_tokens: int, device: torch.device
) -> dict[tuple[int, int], tuple[float, int]]:
    """{(row, document index in row): (sum of token losses, target tokens)} over every row of `split`."""
    from rich.progress import Progress

    sums: dict[tuple[int, int], tuple[float, int]] = {}
    seq_len = split.seq_len
    was_training = loss_fn.training
    loss_fn.eval()
    with Progress(transient=True) as progress:
        task = progress.add_task(f"eval {split.name}", total=split.rows)
        for start in range(0, split.rows, batch_size):
            rows = np.arange(start, min(start + batch_size, split.rows))
            batch = make_batch(split, rows, device)
            flat_index, losses = loss_fn.per_token(
                batch["input_ids"], batch["position_ids"], batch["targets"], chunk_tokens
            )
            docs = document_index(batch["position_ids"]).flatten()[flat_index]
            keys = (flat_index // seq_len + start) * seq_len + docs
            unique, inverse = torch.unique(keys, return_inverse=True)
            loss_sum = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse.cpu(), losses.double().cpu())
            counts = torch.bincount(inverse.cpu(), minlength=len(unique))
            for key, s, c in zip(unique.tolist(), loss_sum.tolist(), counts.tolist(), strict=True):
                sums[divmod(key, seq_len)] = (s, c)
            progress.advance(task, len(rows))
    loss_fn.train(was_training)
    return sums


def _summary(loss_sum: float, tokens: int, samples: int, rows: list[tuple[float, int]] | None = None) -> dict[str, Any]:
    """Token-weighted loss, perplexity, counts and (given the per-record (loss, tokens)) the loss's standard error."""
    loss = loss_sum / tokens if tokens else None
    ppl = math.exp(min(loss, 700.0)) if loss is not None else None
    out: dict[str, Any] = {"loss": loss, "perplexity": ppl, "tokens": tokens, "samples": samples}
    if rows:
        _, se, _ = weighted_mean_se([x for x, _ in rows], [w for _, w in rows])
        out["loss_se"] = se if math.isfinite(se) else None
    return out


def evaluate_split(
    loss_fn: TokenLoss, split: PackedSplit, batch_size: int, chunk_tokens: int, device: torch.device
) -> dict[str, Any]:
    """Per-sample (by record id), per-category and overall loss/perplexity of a packed split."""
    per_doc = document_losses(loss_fn, split, batch_size, chunk_tokens, device)
    samples: dict[str, list[Any]] = {}
    for (row, doc), (s, c) in sorted(per_doc.items()):
        if doc >= len(split.sample_ids[row]):
            raise EvalError(
                f"eval row {row}: document {doc} has targets but no sample id (padding with loss_mask=1?); "
                "the shards are inconsistent, re-run packing"
            )
        sid = split.sample_ids[row][doc]
        entry = samples.setdefault(sid, [0.0, 0, split.categories[row][doc]])
        entry[0] += s
        entry[1] += c
    if not samples:
        raise EvalError(f"eval split has no trainable tokens ({split.rows} rows); nothing to evaluate")
    per_sample = {
        sid: {"loss": s / c, "tokens": c, "category": cat} for sid, (s, c, cat) in sorted(samples.items())
    }
    return {
        "schema_version": SCHEMA_VERSION,
        **summarise_losses(per_sample),
        "per_sample": per_sample,
    }


def summarise_losses(per_sample: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overall and per-category token-weighted loss with its standard error, from per-record loss and tokens."""
    cats: dict[str, list[tuple[float, int]]] = {}
    for v in per_sample.values():
        cats.setdefault(v.get("category") or "uncategorized", []).append((v["loss"], v["tokens"]))

    def summary(rows: list[tuple[float, int]]) -> dict[str, Any]:
        return _summary(sum(x * w for x, w in rows), sum(w for _, w in rows), len(rows), rows)

    every = [row for rows in cats.values() for row in rows]
    return {"overall": summary(every), "per_category": {k: summary(v) for k, v in sorted(cats.items())}}


def write_eval(report: dict[str, Any], path: str | Path) -> Path:
    """Validate `report` against schemas/eval.schema.json and write it (sorted keys, atomic)."""
    jsonschema.validate(report, eval_schema())
    out = Path(path)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def length_batches(lengths: list[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Indices of `lengths` in batches, longest first: at most `batch_size` each and, padded to the
    batch's longest, at most `batch_tokens` prompt tokens (a long prompt alone may exceed it)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (len(last) + 1) * lengths[last[0]] <= batch_tokens:
            last.append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def generate_texts(
    model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, device: torch.device, batch_size: int = 8,
    batch_tokens: int = 2048,
) -> list[str]:
    """Greedy completions of rendered prompts, batched with left padding (`length_batches`), in input order.

    Prompts are batched by length (longest first) so a batch wastes little padding, and a batch of
    long prompts holds fewer of them: padding 12 prompts to one 800-token tool schema tripled the
    time here. The batches depend only on the prompts, so the same prompts give the same completions.
    """
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    out: list[str] = [""] * len(texts)
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("generate", total=len(texts))
        for batch in length_batches([len(e) for e in encoded], batch_size, batch_tokens):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = encoded[i]
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, pad_token_id=pad_id)
            for row, i in enumerate(batch):
                out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True)
            progress.advance(task, len(batch))
    model.train(was_training)
    return out


def generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, device: torch.device, batch_size: int = 8,
    batch_tokens: int = 2048,
) -> list[dict[str, str]]:
    """Greedy answers of the model to a few user prompts, rendered with its chat template."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    completions = generate_texts(model, tokenizer, texts, max_new_tokens, device, batch_size, batch_tokens)
    return [{"prompt": p, "completion": c} for p, c in zip(prompts, completions, strict=True)]


def answer_prompt(tokenizer: Any, record: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(rendered prompt, reference assistant message) for generating one eval record's answer, or None.

    The answer generated is the first assistant turn that calls a tool, else the last assistant turn;
    the prompt is every turn before it (with the record's tools), rendered with the generation prompt
    and the template the packer trained with (ChatML with tools when the tokenizer's own drops them).
    """
    canonical = list(record.get("messages") or [])
    turns = [i for i, m in enumerate(canonical) if m.get("role") == "assistant"]
    calls = [i for i in turns if canonical[i].get("tool_calls")]
    target = calls[0] if calls else (turns[-1] if turns else None)
    if target is None or target == 0:
        return None
    msgs = to_hf_messages({**record, "messages": canonical})
    tools = parse_tools(record.get("tools"))
    template = template_for(tokenizer, msgs[: target + 1], tools)  # the packer's rule: tools never vanish
    text = tokenizer.apply_chat_template(msgs[:target], tools=tools, tokenize=False, chat_template=template,
                                         add_generation_prompt=True)
    return text, canonical[target]


def generation_eval(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], max_new_tokens: int, device: torch.device,
    batch_size: int = 8, max_prompt_tokens: int = 1024, batch_tokens: int = 2048,
) -> dict[str, Any]:
    """Greedy answers to eval records scored against their references: per example (by id) and per category."""
    from trainer.metrics import reference_of

    texts, rows = [], []
    for rec in sorted(records, key=lambda r: str(r["id"])):
        prepared = answer_prompt(tokenizer, rec)
        if prepared is None:
            continue
        text, reference = prepared
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > max_prompt_tokens:
            continue
        texts.append(text)
        rows.append((str(rec["id"]), rec.get("category"), reference))
    completions = generate_texts(model, tokenizer, texts, max_new_tokens, device, batch_size, batch_tokens)
    per_sample: dict[str, dict[str, Any]] = {}
    for (rid, category, reference), completion in zip(rows, completions, strict=True):
        kind, ref_text, tool_name = reference_of(reference)
        per_sample[rid] = {"category": category, **score_answer(kind, completion, ref_text, tool_name),
                           "completion": completion}
    return {"max_new_tokens": max_new_tokens, "per_category": summarise_generations(per_sample),
            "per_sample": per_sample}


def heldout_eval(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], device: torch.device, max_len: int = 1024,
    batch_size: int = 4, chunk_tokens: int = 2048,
) -> dict[str, Any]:
    """Loss of the answers of a held-out set that no round trains on (the forgetting check), with its SE."""
    docs, ids, cats = [], [], []
    for rec in sorted(records, key=lambda r: str(r["id"])):
        pair, reason, _ = _ifd_documents(tokenizer, rec, max_len)
        if reason is None:
            docs.append(pair[0])
            ids.append(str(rec["id"]))
            cats.append(rec.get("category"))
    if not docs:
        raise EvalError("the held-out (forgetting) set has no record with an answer to score")
    split = _pack_sequential(docs, max_len, tokenizer.pad_token_id or 0)
    per_doc = document_losses(TokenLoss(model), split, batch_size, chunk_tokens, device)
    per_sample = {}
    for (row, doc), (s, c) in sorted(per_doc.items()):
        i = int(split.sample_ids[row][doc])
        per_sample[ids[i]] = {"loss": s / c, "tokens": c, "category": cats[i]}
    return {**summarise_losses(dict(sorted(per_sample.items()))), "per_sample": dict(sorted(per_sample.items()))}


def extra_evals(model: Any, tokenizer: Any, eval_cfg: Any, device: torch.device) -> dict[str, Any]:
    """The evaluations beyond eval-split loss that the eval config asks for: generations, metrics, held-out loss."""
    import polars as pl

    report: dict[str, Any] = {}
    if eval_cfg.prompts:
        report["generations"] = generate(model, tokenizer, eval_cfg.prompts, eval_cfg.max_new_tokens, device,
                                         eval_cfg.generate_batch_size, eval_cfg.generate_batch_tokens)
    if eval_cfg.generate_records:
        records = pl.read_parquet(eval_cfg.generate_records).to_dicts()
        report["generation"] = generation_eval(
            model, tokenizer, records, eval_cfg.max_new_tokens, device, eval_cfg.generate_batch_size,
            batch_tokens=eval_cfg.generate_batch_tokens,
        )
    if eval_cfg.heldout_records:
        records = pl.read_parquet(eval_cfg.heldout_records).to_dicts()
        report["heldout"] = heldout_eval(model, tokenizer, records, device, batch_size=eval_cfg.batch_size,
                                         chunk_tokens=eval_cfg.chunk_tokens)
    return report


def _render(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool,
            tools: list[Any] | None = None, template: str | None = None) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=template,
                                         add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _ifd_documents(tokenizer: Any, record: dict[str, Any], max_len: int) -> tuple[list[Any], str | None, bool]:
    """([(ids, mask) conditioned, (ids, mask) alone], None, truncated), or ([], reason, False) if unscorable."""
    # rendered as the packer renders it (curator.format.chat): context in the first user turn, tool calls
    # as functions, and the ChatML-with-tools fallback when the tokenizer's own template drops tool content
    messages = to_hf_messages({"messages": record.get("messages") or [], "context": record.get("context")})
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        return [], "no assistant turn after a prompt", False
    tools = parse_tools(record.get("tools"))
    template = template_for(tokenizer, messages[: last + 1], tools)
    full = _render(tokenizer, messages[: last + 1], False, tools, template)
    prompt = _render(tokenizer, messages[:last], True, tools, template)
    cut = _common_prefix(full, prompt)
    answer = full[cut:]
    if not answer:
        return [], "empty answer", False
    header = prompt[_common_prefix(prompt, _render(tokenizer, messages[:last], False, tools, template)):]
    cond_ids = (prompt[:cut] + answer)[-max_len:]
    cond_mask = ([0] * cut + [1] * len(answer))[-max_len:]
    alone_ids = (header + answer)[:max_len]
    alone_mask = ([0] * len(header) + [1] * len(answer))[:max_len]
    truncated = cut + len(answer) > max_len or len(header) + len(answer) > max_len
    return [(cond_ids, cond_mask), (alone_ids, alone_mask)], None, truncated


def _pack_sequential(docs: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> PackedSplit:
    """Pack documents in order into rows of `seq_len` (next-fit), padding as one trailing pad document."""
    rows_ids: list[list[int]] = []
    rows_mask: list[list[int]] = []
    rows_pos: list[list[int]] = []
    rows_lens: list[list[int]] = []
    rows_keys: list[list[str]] = []
    for i, (ids, mask) in enumerate(docs):
        if not rows_ids or len(rows_ids[-1]) + len(ids) > seq_len:
            rows_ids.append([])
            rows_mask.append([])
            rows_pos.append([])
            rows_lens.append([])
            rows_keys.append([])
        rows_ids[-1] += ids
        rows_mask[-1] += mask
        rows_pos[-1] += list(range(len(ids)))
        rows_lens[-1].append(len(ids))
        rows_keys[-1].append(str(i))
    for ids, mask, pos in zip(rows_ids, rows_mask, rows_pos, strict=True):
        pad = seq_len - len(ids)
        ids += [pad_id] * pad
        mask += [0] * pad
        pos += list(range(pad))
    shape = (len(rows_ids), seq_len)
    return PackedSplit(
        "pool",
        np.asarray(rows_ids, dtype=np.int32).reshape(shape),
        np.asarray(rows_mask, dtype=np.int8).reshape(shape),
        np.asarray(rows_pos, dtype=np.int32).reshape(shape),
        rows_lens,
        rows_keys,
        [[""] * len(k) for k in rows_keys],
    )


def score_pool(
    model: Any,
    tokenizer: Any,
    pool: Iterable[dict[str, Any]] | str | Path,
    *,
    max_len: int = 2048,
    batch_size: int = 4,
    chunk_tokens: int = 2048,
    device: torch.device | str | None = None,
) -> list[dict[str, Any]]:
    """Per-record scores over a training pool for the feedback loop, sorted by record id.

    `model`: a causal LM or peft model (put in eval mode here). `pool`: canonical records (dicts
    with `id` and `messages`, the LAST assistant turn is the answer scored) -> each row has
    `loss_cond` = mean loss of the answer tokens given the prompt, `loss_alone` = the same answer
    after only the assistant header, `ifd` = loss_cond / loss_alone, `tokens`, `truncated`. Or a
    packed shard directory -> `loss_cond` over all trainable tokens of each record of the train
    split, `loss_alone`/`ifd` None (packed rows hold no answer-only rendering). A record that
    cannot be scored gets `skipped` with the reason instead of vanishing.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = TokenLoss(model)
    if isinstance(pool, str | Path):
        split = read_split(pool, read_manifest(pool), "train")
        report = evaluate_split(loss_fn, split, batch_size, chunk_tokens, device)
        return [
            {"id": sid, "loss_cond": v["loss"], "loss_alone": None, "ifd": None, "tokens": v["tokens"]}
            for sid, v in report["per_sample"].items()
        ]
    docs: list[tuple[list[int], list[int]]] = []
    owners: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for record in pool:
        rid = str(record.get("id"))
        pair, reason, truncated = _ifd_documents(tokenizer, record, max_len)
        if reason is not None:
            results[rid] = {"id": rid, "loss_cond": None, "loss_alone": None, "ifd": None, "tokens": 0,
                            "skipped": reason}
            continue
        row = {"id": rid, "tokens": sum(pair[0][1]), "truncated": truncated}
        owners += [row, row]
        docs += pair
        results[rid] = row
    if docs:
        split = _pack_sequential(docs, max_len, tokenizer.pad_token_id or 0)
        per_doc = document_losses(loss_fn, split, batch_size, chunk_tokens, device)
        losses: dict[int, float] = {}
        for (row_i, doc), (s, c) in per_doc.items():
            losses[int(split.sample_ids[row_i][doc])] = s / c
        for i in range(0, len(docs), 2):
            row = owners[i]
            row["loss_cond"], row["loss_alone"] = losses.get(i), losses.get(i + 1)
            ok = row["loss_cond"] is not None and row["loss_alone"]
            row["ifd"] = row["loss_cond"] / row["loss_alone"] if ok else None
    return [results[k] for k in sorted(results)]


def evaluate_model(cfg: Any, adapter: str | Path | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate base + adapter (default `output_dir/adapter`; "none": the base alone) into a schema-checked file.

    The file is `out`, else `output_dir/eval.json` (`eval_base.json` for the base model alone).
    Returns the file path with the overall and per-category figures.
    """
    from trainer.data import prepare_run
    from trainer.model import adapter_merged, apply_cpu_threads, load_base_model, resolve_runtime

    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"enabled": True})})
    manifest, tokenizer, _, eval_split = prepare_run(cfg)
    runtime = resolve_runtime(cfg)
    apply_cpu_threads(cfg, runtime)
    model = load_base_model(cfg, runtime)
    base_only = str(adapter) == "none"
    adapter_dir = Path(adapter) if adapter is not None and not base_only else Path(cfg.output_dir) / "adapter"
    if not base_only:
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; train first or pass adapter='none'")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    with adapter_merged(model), torch.no_grad():
        report = evaluate_split(TokenLoss(model), eval_split, cfg.eval.batch_size, cfg.eval.chunk_tokens,
                                runtime.device)
        report.update(extra_evals(model, tokenizer, cfg.eval, runtime.device))
    report.update(model=cfg.model, adapter=None if base_only else str(adapter_dir), shards=cfg.shards,
                  shards_config_hash=manifest.get("config_hash"))
    target = Path(out) if out is not None else Path(cfg.output_dir) / ("eval_base.json" if base_only else "eval.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    path = write_eval(report, target)
    return {"eval": str(path), "overall": report["overall"], "per_category": report["per_category"]}
