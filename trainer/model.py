"""Load a base causal LM with transformers and wrap it with a peft LoRA adapter.

fp32 on CPU, bf16 on GPU (`dtype: auto`); `trust_remote_code` stays off unless asked. QLoRA loads
the base in 4-bit NF4 through bitsandbytes and exists on CUDA only: elsewhere it is a clear error
raised before anything is loaded. The GPU paths (bf16, QLoRA) are written with care but are not
exercised by the CPU test suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import TrainConfig

# Attention + MLP projections per `config.model_type`: the usual LoRA targets (QLoRA paper: all
# linear layers of the blocks). Unknown architectures fall back to peft's "all-linear".
TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "smollm3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


# CPU defaults, from the measurements in BENCHMARKS.md ("SmolLM2-135M-Instruct on CPU"): torch
# intra-op threads when `cpu_threads` is not set (half the logical CPUs, about the physical cores:
# on the 2-vCPU build machine one thread trained SmolLM2 faster than two), and the compute dtype of
# `dtype: auto` on CPU.
CPU_THREADS_DEFAULT = max(1, (os.cpu_count() or 2) // 2)
CPU_DTYPE_DEFAULT = torch.float32


class ModelLoadError(Exception):
    """The base model cannot be loaded as asked (missing path, QLoRA without CUDA, ...)."""


@dataclass
class Runtime:
    """Where and in what precision the run computes."""

    device: torch.device
    dtype: torch.dtype


def resolve_runtime(cfg: TrainConfig, local_rank: int = 0) -> Runtime:
    """Pick the device and dtype: `auto` is CUDA+bf16 when a GPU is present, else CPU+fp32."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ModelLoadError("device: cuda was asked but no CUDA device is visible; use device: auto or cpu")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = names.get(cfg.dtype, torch.bfloat16 if use_cuda else CPU_DTYPE_DEFAULT)
    if cfg.qlora and not use_cuda:
        raise ModelLoadError(
            "qlora: 4-bit loading needs bitsandbytes on a CUDA GPU and none is available here; "
            "set qlora: false to train a plain LoRA adapter in fp32 on CPU"
        )
    return Runtime(device=device, dtype=dtype)


def apply_cpu_threads(cfg: TrainConfig, runtime: Runtime) -> int | None:
    """Set torch's intra-op threads for a CPU run (`cpu_threads`, else CPU_THREADS_DEFAULT); None on GPU.

    Always an explicit count, never torch's default (which follows OMP_NUM_THREADS and the cores),
    so two processes of the same run reduce in the same order and compute the same numbers.
    """
    if runtime.device.type != "cpu":
        return None
    threads = cfg.cpu_threads or CPU_THREADS_DEFAULT
    torch.set_num_threads(threads)
    return threads


def target_modules_for(model_type: str) -> list[str] | str:
    """LoRA target module names for an architecture, or "all-linear" when it is not in the table."""
    return TARGET_MODULES.get(model_type, "all-linear")


def load_base_model(cfg: TrainConfig, runtime: Runtime) -> Any:
    """Load the base causal LM (4-bit when `qlora`), frozen, on `runtime.device`."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": runtime.dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.qlora:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ModelLoadError("qlora: bitsandbytes is not installed; pip install 'sft-curator[gpu]'") from exc
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=runtime.dtype,
        )
        kwargs["device_map"] = {"": runtime.device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {cfg.model!r}: cannot load it as a causal LM: {exc}") from exc
    if not cfg.qlora:
        model.to(runtime.device)
    model.config.use_cache = False
    return model


def wrap_lora(model: Any, cfg: TrainConfig) -> Any:
    """Wrap a base model with a fresh LoRA adapter (trainable) as configured."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    targets = cfg.lora.target_modules or target_modules_for(model.config.model_type)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ModelLoadError(
            f"lora.target_modules {targets!r} do not match modules of this {model.config.model_type} model: "
            f"{exc}; set lora.target_modules to names of its linear layers"
        ) from exc
    if cfg.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    return peft_model


def max_positions(cfg: Any) -> int | None:
    """The maximum sequence length a model config declares, or None."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_params(model: Any) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def merge_adapter(model: Any) -> Any:
    """The base model with the LoRA weights merged in (untying embeddings first when the head was adapted).

    Merging into a head tied to the input embeddings would also shift the embeddings (or be lost on
    save), so an adapted tied head gets its own copy of the weight and the config stops tying them.
    """
    base = model.get_base_model()
    head = base.get_output_embeddings()
    if hasattr(head, "base_layer") and getattr(base.config, "tie_word_embeddings", False):
        head.base_layer.weight = torch.nn.Parameter(head.base_layer.weight.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
    return model.merge_and_unload()


@contextmanager
def adapter_merged(model: Any) -> Iterator[Any]:
    """The model with its LoRA weights folded into the base for an evaluation, unfolded on exit.

    A merged forward skips the adapter matmuls (~25% faster on CPU for SmolLM2 at r=16). Left as it
    is when there is no adapter, when the base is quantized (QLoRA: merging would requantize), or when
    an adapted head is tied to the input embeddings (merging would move the embeddings too).
    """
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    base = model.get_base_model()
    head = base.get_output_embeddings()
    tied_head = hasattr(head, "base_layer") and getattr(base.config, "tie_word_embeddings", False)
    if getattr(base, "hf_quantizer", None) is not None or tied_head:
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()
