"""What the Q4_1 quantization of the packaged SmolLM2-135M-Instruct costs: greedy answers and eval loss.

The original bf16 weights are not available offline, so the dequantized model is compared with what
SmolLM2-135M-Instruct is published to do (BENCHMARKS.md) rather than with itself: greedy answers to
a few prompts of the kinds the model card shows, and the per-category eval loss (nats per answer
token) on the demo's sources (sample_data/, packed with its tokenizer as `bench/cpu_defaults.py`
does), in fp32 (and with --bf16 in bf16, what a bf16 run computes on top of the 4-bit weights).

    .venv/bin/python bench/smollm2_quality.py [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "What is the capital of France?",
    "What is gravity?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the sum of a list of numbers.",
    "Give me three tips for staying healthy.",
    "Rewrite this sentence to be more formal: hey, the meeting got moved to tuesday.",
]


def main() -> None:
    import torch
    from cpu_defaults import build_shards_for
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import read_manifest, read_split
    from trainer.evaluate import evaluate_split
    from trainer.losses import TokenLoss
    from trainer.pretrained import packaged_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="also the eval loss computed in bf16 (slow on CPUs "
                        "without native bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = packaged_model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out: dict = {"generations": [], "eval_loss": {}}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        answer = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        out["generations"].append({"prompt": prompt, "answer": answer})
        print(json.dumps(out["generations"][-1], ensure_ascii=False), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards_for(str(model_dir), Path(tmp), 512)
        split = read_split(shards, read_manifest(shards), "eval")
        for dtype in (torch.float32, torch.bfloat16) if args.bf16 else (torch.float32,):
            model = model.to(dtype)
            with torch.no_grad():
                report = evaluate_split(TokenLoss(model), split, 8, 2048, torch.device("cpu"))
            out["eval_loss"][str(dtype).removeprefix("torch.")] = {
                "overall": report["overall"],
                "per_category": {c: {"loss": v["loss"], "tokens": v["tokens"]}
                                 for c, v in report["per_category"].items()},
            }
            print(json.dumps(out["eval_loss"][str(dtype).removeprefix("torch.")]), flush=True)


if __name__ == "__main__":
    main()
