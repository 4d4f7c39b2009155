"""A tokenizer trained locally and a tiny Llama-style model built from a config: no download, ever.

The demo and the tests use these so that the whole loop runs offline on a CPU in minutes. The
tokenizer is a byte-level BPE trained with `tokenizers` on the texts given, wrapped as a
`PreTrainedTokenizerFast` with ChatML special tokens and a ChatML chat template, saved like any
hub tokenizer so every other module loads it with `AutoTokenizer.from_pretrained(path)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from curator.format.chat import CHATML_TEMPLATE  # one ChatML template (with tool calls) for the project

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2048) -> Path:
    """Train a byte-level BPE on `texts` and save it (with the ChatML template) to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def build_tiny_model(
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised Llama-style causal LM sized for CPU tests and save it with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def pretrain_tiny(
    model_dir: str | Path,
    texts: Iterable[str],
    *,
    steps: int = 300,
    lr: float = 3e-3,
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    threads: int | None = None,
) -> list[float]:
    """Give a freshly built tiny model some language: full-parameter causal-LM training on `texts`.

    A randomly initialised base leaves LoRA nothing to adapt (its loss stays near ln(vocab)), so the
    demo pretrains its local base on the train-side text first, the way a real base model arrives
    pretrained. This is not the SFT trainer (trainer/loop.py trains adapters only); it reuses its
    loss, targets and schedule and returns the loss per step. The model is saved back in place. It runs
    on `threads` torch threads (default: the trainer's CPU default), so every process builds the same weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import shifted_targets
    from trainer.losses import TokenLoss
    from trainer.model import CPU_THREADS_DEFAULT
    from trainer.schedule import lr_at

    torch.set_num_threads(threads or CPU_THREADS_DEFAULT)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    n_rows = len(stream) // seq_len
    if n_rows < batch_size:
        raise ValueError(f"pretraining needs at least {batch_size * seq_len} tokens of text, got {len(stream)}")
    rows = torch.tensor(stream[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)
    positions = torch.arange(seq_len).expand(batch_size, seq_len)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    loss_fn = TokenLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, base_lr=lr, warmup_steps=max(steps // 20, 1), total_steps=steps)
        batch = rows[torch.randint(0, n_rows, (batch_size,), generator=generator)]
        targets = shifted_targets(batch, torch.ones_like(batch), positions)
        loss = loss_fn(batch, positions, targets) / (targets != -100).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))
    model.save_pretrained(model_dir, safe_serialization=True)
    return losses
