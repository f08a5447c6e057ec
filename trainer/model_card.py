"""The model card of a run's adapter folder (``<output_dir>/adapter/README.md``), in the format the
Hugging Face Hub reads: YAML front matter (``base_model``, ``library_name``, ``tags``, ``model-index``
with the evaluation results) built with ``huggingface_hub.ModelCardData``, then what a reader needs
to trust and reuse the adapter: the method and its settings, the data, the training, the results
with their chance levels, the MLflow run, and how to load it.

peft's ``save_pretrained`` writes its blank template ("[More Information Needed]") into the same
file; `write_model_card` replaces it after every save and once more after the final evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from models.method_spec import PEFT_FORMAT, WHOLE_MODEL_FORMAT
from models.methods import adapter_method
from models.weight_formats import FULL_PRECISION, describe, tower_formats

CARD_NAME = "README.md"
# The Hub's task for a model that reads a video (and text) and writes text.
HUB_TASK = "video-text-to-text"


def write_model_card(
    adapter_dir: str | Path,
    run_config: dict[str, Any],
    run_info: dict[str, Any],
    *,
    eval_scores: dict[str, float] | None = None,
    eval_chance: dict[str, float] | None = None,
    eval_step: int | None = None,
    trainable_params: int | None = None,
    total_params: int | None = None,
    allocation: dict[str, Any] | None = None,
) -> Path:
    """Write ``adapter_dir/README.md`` (atomically: a reader never sees half a card); returns its path.

    Args:
        run_config: the resolved run config (`RunConfig.to_dict()`, as ``run_config.json`` holds it).
        run_info: ``mlflow_run_id``, ``tracking_uri`` and ``step`` (``run_info.json``).
        eval_scores / eval_chance: ``eval/<metric>`` → value, and its chance level where one is
            known (the same keys); ``eval_step``: the step they were measured at.
        allocation: the ranks per group a budget allocator chose (``adapter/allocation.json``).
    """
    path = Path(adapter_dir) / CARD_NAME
    card = model_card(
        run_config,
        run_info,
        eval_scores=eval_scores or {},
        eval_chance=eval_chance or {},
        eval_step=eval_step,
        trainable_params=trainable_params,
        total_params=total_params,
        allocation=allocation,
    )
    tmp = path.with_name(f"{CARD_NAME}.tmp-{os.getpid()}")
    tmp.write_text(str(card))
    os.replace(tmp, path)
    return path


def model_card(
    run_config: dict[str, Any],
    run_info: dict[str, Any],
    *,
    eval_scores: dict[str, float],
    eval_chance: dict[str, float],
    eval_step: int | None,
    trainable_params: int | None,
    total_params: int | None,
    allocation: dict[str, Any] | None,
) -> ModelCard:
    """The card as a ``huggingface_hub.ModelCard`` (``str(card)`` is the file)."""
    model, adapter, data, train = (run_config[k] for k in ("model", "adapter", "data", "train"))
    method = adapter_method(adapter["method"])
    dataset = _dataset_name(data, run_config.get("assets_dir"))
    base = model.get("name_or_path") or f"random-init {model.get('preset')} preset"
    scores = {k.removeprefix("eval/"): v for k, v in eval_scores.items()}
    chance = {k.removeprefix("eval/").removeprefix("chance/"): v for k, v in eval_chance.items()}
    card_data = ModelCardData(
        base_model=base,
        library_name=_library(method.saved_as),
        pipeline_tag=HUB_TASK,
        tags=["video-llama", "multimodal-qlora", method.name, "video-captioning"],
        model_name=f"Video-LLaMA {method.name} ({dataset})",
        # The language the adapter captions in, where the run chose one (data.caption_language).
        language=data.get("caption_language"),
        eval_results=[
            EvalResult(
                task_type=HUB_TASK,
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=name,
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in sorted(scores.items())
        ]
        or None,
    )
    sections = [
        f"# Video-LLaMA {method.name} adapter ({dataset})",
        f"{method.summary[0].upper() + method.summary[1:]}, trained with multimodal-qlora on `{base}` "
        f"({describe(model['quantization'])} weights).",
        "## Method\n\n"
        + _table(
            _method_rows(method, adapter, trainable_params, total_params, allocation)
            + _format_rows(model["quantization"], model.get("dtype"))
        ),
        "## Data\n\n" + _table(_data_rows(data, run_config.get("selector", {}))),
        "## Training\n\n" + _table(_training_rows(train, run_config, run_info)),
        "## Evaluation\n\n" + _evaluation(scores, chance, eval_step),
        "## Tracking\n\n"
        + _table(
            [
                ("MLflow run", f"`{run_info.get('mlflow_run_id')}`"),
                ("tracking URI", f"`{run_info.get('tracking_uri')}`"),
                ("resolved config", "`run_config.json` (this folder)"),
            ]
        ),
        "## How to load\n\n" + _loading(method, model, train),
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _library(saved_as: str) -> str:
    if saved_as == PEFT_FORMAT:
        return "peft"
    if saved_as == WHOLE_MODEL_FORMAT:
        return "transformers"
    return "multimodal-qlora"  # prefix / bottleneck adapters: this project's own format


def _dataset_name(data: dict[str, Any], assets_dir: str | None) -> str:
    """``synthvid-<task>`` for generated SynthVid shards (`trainer.assets`), else the shards' name."""
    shards = Path(str(data.get("train_shards") or "unknown"))
    if data.get("synthvid") and assets_dir and shards.parent == Path(assets_dir) / "synthvid":
        return f"synthvid-{data['synthvid']['task']}"
    return shards.name


def _method_rows(
    method: Any,
    adapter: dict[str, Any],
    trainable: int | None,
    total: int | None,
    allocation: dict[str, Any] | None,
) -> list[tuple[str, str]]:
    rows = [("method", f"`{method.name}`: {method.summary}")]
    # The settings this method reads (the others do not apply to it), those left at null (a default)
    # out; a section (adapter.gate, adapter.adalora) one row per setting, not one dict.
    for key in sorted(method.fields):
        value = adapter.get(key)
        settings = value.items() if isinstance(value, dict) else [(None, value)]
        rows += [
            (f"`adapter.{key}{'' if sub is None else '.' + sub}`", f"`{v}`")
            for sub, v in settings
            if v is not None
        ]
    if allocation is not None:
        ranks = allocation.get("ranks", allocation)
        rows.append(("ranks chosen per group", f"`{ranks}`"))
    if trainable is not None:
        share = f" of {total:,} ({100 * trainable / total:.2f}%)" if total else ""
        rows.append(("trainable parameters", f"{trainable:,}{share}"))
    rows.append(("per-frame gates", "yes" if method.frame_gates else "no"))
    rows.append(("mergeable into the base", "yes" if method.mergeable else "no"))
    return rows


def _format_rows(quantization: Any, dtype: str | None) -> list[tuple[str, str]]:
    """The weight format of each part (`model.quantization`: vision, fusion, llm), the projection
    always in the compute dtype."""
    compute = f"compute dtype (`model.dtype={dtype}`)"
    names = {"fusion": "fusion (Q-Formers)"}
    rows = [
        (f"weights: `{names.get(part, part)}`", compute if fmt == FULL_PRECISION else f"`{fmt}`")
        for part, fmt in tower_formats(quantization).items()
    ]
    rows.append(("weights: projection", compute))
    return rows


def _data_rows(data: dict[str, Any], selector: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("training shards", f"`{data.get('train_shards')}`"),
        ("eval shards", f"`{data.get('eval_shards')}`"),
    ]
    if data.get("caption_language"):
        rows.append(("caption language", f"`{data['caption_language']}` (json captions_by_language)"))
    if data.get("synthvid"):
        synthvid = data["synthvid"]
        rows.append(("SynthVid", ", ".join(f"{k} {v}" for k, v in synthvid.items())))
    rows.append(("frames", f"{data.get('num_candidate_frames')} candidates at {data.get('frame_size')} px"))
    if selector:
        rows.append(("frame selection", f"`{selector.get('policy')}`, K = {selector.get('k')}"))
    return rows


def _training_rows(
    train: dict[str, Any], run_config: dict[str, Any], run_info: dict[str, Any]
) -> list[tuple[str, str]]:
    rates = ", ".join(
        f"{name} {train[key]:g}"
        for name, key in (("LLM", "lr"), ("ViT", "vit_lr"), ("aligner", "aligner_lr"), ("gates", "gate_lr"))
        if train.get(key) is not None
    )
    return [
        ("steps", f"{run_info.get('step')} of {train['steps']}"),
        ("micro batch × accumulation", f"{train['micro_batch_size']} × {train['grad_accum']}"),
        ("learning rates", f"{rates} ({train['schedule']}, {train['warmup_steps']} warm-up steps)"),
        ("seed", str(run_config.get("seed"))),
        ("DeepSpeed config", f"`{run_config.get('deepspeed', {}).get('config')}`"),
    ]


def _evaluation(scores: dict[str, float], chance: dict[str, float], step: int | None) -> str:
    if not scores:
        return "Not evaluated (eval.num_samples = 0, or the run stopped before its evaluation)."
    at = f" at step {step}" if step is not None else ""
    rows = [
        (f"`{name}`", f"{value:.4g}", f"{chance[name]:.4g}" if name in chance else "–")
        for name, value in sorted(scores.items())
    ]
    return f"On the eval shards{at}:\n\n" + _table(rows, ("metric", "value", "chance"))


def _loading(method: Any, model: dict[str, Any], train: dict[str, Any]) -> str:
    base = model.get("name_or_path")
    # A run with a retrieval head (train.contrastive_weight > 0) saved it with the adapter.
    head = f", retrieval_dim={train['contrastive_dim']}" if train.get("contrastive_weight") else ""
    if method.saved_as == WHOLE_MODEL_FORMAT:
        code = (
            "from models.modeling_video_llama import VideoLlamaForConditionalGeneration\n\n"
            'model = VideoLlamaForConditionalGeneration.from_pretrained("<this folder>")'
        )
        return f"The whole model was trained; this folder is a `save_pretrained` model.\n\n```python\n{code}\n```"
    code = (
        "from models.adapters import load_adapter\n"
        "from models.loading import load_model\n\n"
        f'base = load_model("{base}", quantization={json.dumps(model["quantization"])}{head})\n'
        'model = load_adapter(base, "<this folder>")'
    )
    text = f"```python\n{code}\n```"
    if method.saved_as == PEFT_FORMAT:
        text += "\n\nEvaluated as the run was: `python -m trainer.evaluation --checkpoint <this folder>`."
    if method.saved_as == PEFT_FORMAT and not method.frame_gates:
        text += '\n\nA plain peft adapter: `peft.PeftModel.from_pretrained(base, "<this folder>")` loads it as well.'
    if method.mergeable:
        text += "\n\nMerged into the base weights: `python -m trainer.export --adapter <this folder> --out merged/`."
    return text


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("", "value")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
