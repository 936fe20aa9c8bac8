# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The model card of a run (`README.md` of its output directory, rendered from `model_card_template.md` with
`huggingface_hub.ModelCard.from_template`) and the upload of the output directory to the Hub.
"""

import os
from dataclasses import asdict
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from data.captions import KARPATHY_SOURCE
from data.shapes import SHAPES_STYLES
from evaluation.markdown_tables import format_score, markdown_table
from qformer_pretraining.retrieval import RECALL_KS

from .arguments import CONTRASTIVE, QFORMER_STAGE1, VLMTrainingArguments
from .checkpointing import CHECKPOINT_PREFIX, TMP_PREFIX
from .results import TrainingResults
from .saved_models import BEST_DIR


TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
STAGE1_TEMPLATE_PATH = Path(__file__).with_name("stage1_model_card_template.md")
CONTRASTIVE_TEMPLATE_PATH = Path(__file__).with_name("contrastive_model_card_template.md")
STAGE_TAGS = {QFORMER_STAGE1: ["blip-2", "q-former"], CONTRASTIVE: ["contrastive", "dual-encoder"]}
LOSS_NAMES = {"clip": "symmetric InfoNCE loss of CLIP", "sigmoid": "pairwise sigmoid loss of SigLIP"}
CARD_METRICS = ("CIDEr", "METEOR", "BLEU-4", "ROUGE-L")
"""The caption metrics a model card reports, in its model-index and its table."""
CARD_QUESTION_METRICS = ("VQA/accuracy", "POPE/random/f1", "POPE/popular/f1", "POPE/adversarial/f1")
"""The answers' scores a model card reports (when the run answered questions), in its model-index and its table."""
STAGE1_CARD_METRICS = (*(f"{d}_R{k}" for d in ("i2t", "t2i") for k in RECALL_KS), "recall_mean")
"""The retrieval metrics a stage-1 model card reports."""


def base_model_ids(*sources: str | None) -> list[str]:
    """The Hub ids among the model `sources` a run started from (local directories and unset sources are none)."""
    return [name for name in sources if name is not None and not os.path.exists(name)]


def dataset_ids(dataset: str) -> list[str]:
    """Hub ids of the training data named `dataset` (none for the offline shapes and local directories)."""
    if dataset == "coco-karpathy":
        return [KARPATHY_SOURCE]
    return [] if dataset in SHAPES_STYLES or os.path.exists(dataset) else [dataset]


def question_eval_results(final: dict[str, float], args: VLMTrainingArguments) -> list[EvalResult]:
    """The model-index entries of the final answers' scores: VQA accuracy, and POPE's F1 per split."""
    results = []
    for metric in CARD_QUESTION_METRICS:
        if metric not in final:
            continue
        vqa = metric.startswith("VQA")
        name = (args.eval_vqa if vqa else args.eval_pope) or ""
        split = args.eval_split if vqa else metric.split("/")[1]
        results.append(
            EvalResult(
                task_type="visual-question-answering", task_name="Visual question answering" if vqa else "POPE",
                dataset_type=name, dataset_name=name, dataset_split=split, metric_type="accuracy" if vqa else "f1",
                metric_name=metric, metric_value=round(final[metric], 4),
            )  # fmt: skip
        )
    return results


def card_eval_results(final: dict[str, float], dataset_name: str, split: str) -> list[EvalResult]:
    """The model-index entries of the final metrics: the caption metrics, then the validation loss."""
    common = {"task_type": "image-to-text", "dataset_type": dataset_name, "dataset_name": dataset_name}
    results = [
        EvalResult(
            **common,
            task_name="Image captioning",
            dataset_split=split,
            metric_type=metric.split("-")[0].lower(),
            metric_name=metric,
            metric_value=round(final[metric], 4),
        )
        for metric in CARD_METRICS
        if metric in final
    ]
    if "loss" in final:
        results.append(
            EvalResult(
                **common,
                dataset_split=split,
                metric_type="loss",
                metric_name="validation loss",
                metric_value=round(final["loss"], 4),
            )
        )
    return results


def history_table(history: list[dict], metric_names: list[str]) -> str:
    """One row per evaluation: epoch, step and `metric_names` (a row of dashes when there was none)."""
    rows = [
        [f"{record['epoch']:g}", record["step"], *(f"{record[m]:.4f}" for m in metric_names)] for record in history
    ]
    return markdown_table(["epoch", "step", *metric_names], rows or [["-"] * (2 + len(metric_names))])


def write_model_card(output_dir: str, args: VLMTrainingArguments, results: TrainingResults) -> ModelCard:
    """
    `README.md` of the output dir: metadata (both towers as base models, datasets, pipeline tag, a model-index with the
    final metrics), results per epoch, the training configuration, hardware, wall time, sample captions and usage.
    """
    final = results.final_metrics
    model_name = args.push_to_hub or os.path.basename(os.path.abspath(output_dir))
    datasets = dataset_ids(args.dataset)
    dataset_name = datasets[0] if datasets else args.dataset
    eval_results = card_eval_results(final, dataset_name, args.eval_split) + question_eval_results(final, args)
    base_models = base_model_ids(args.vision_model, args.text_model, args.model_name_or_path)
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_models or None,
        datasets=datasets or None,
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        license="apache-2.0",
        tags=[
            "vision-language", "image-captioning", f"projector-{results.projector_type}", f"fusion-{results.fusion}",
            f"stage-{args.stage}",
        ],  # fmt: skip
        eval_results=eval_results or None,
    )
    towers = " + ".join(base_models) or (
        "tiny random towers (offline)" if args.model == "tiny" else args.model_name_or_path
    )
    if args.vision_init:
        towers += f", the vision tower trained contrastively in `{args.vision_init}`"
    values = {
        **asdict(args),
        **_results_fields(results),
        "model_name": model_name,
        "towers": towers,
        "history_table": history_table(
            results.history, [m for m in ("loss", *CARD_METRICS, *CARD_QUESTION_METRICS) if m in final]
        ),
        "samples_table": markdown_table(("image", "a reference", "generated"), results.sample_captions),
        "config_yaml": yaml.safe_dump(asdict(args), sort_keys=False).strip(),
        "repo": args.push_to_hub or output_dir,
    }
    card = ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **values)
    card.save(os.path.join(output_dir, "README.md"))
    return card


def write_stage1_model_card(output_dir: str, args: VLMTrainingArguments, results: TrainingResults) -> ModelCard:
    """
    `README.md` of a pair stage's output dir (Q-Former stage 1, or contrastive): metadata (the vision tower and BERT
    as base models, a model-index with the final retrieval recalls), losses and Recall@1/5/10 per epoch, the
    configuration, hardware and times.
    """
    final = results.final_metrics
    model_name = args.push_to_hub or os.path.basename(os.path.abspath(output_dir))
    datasets = dataset_ids(args.dataset)
    dataset_name = datasets[0] if datasets else args.dataset
    common = {"task_type": "image-text-retrieval", "dataset_type": dataset_name, "dataset_name": dataset_name}
    eval_results = [
        EvalResult(**common, dataset_split=args.eval_split, metric_type="recall", metric_name=name,
                   metric_value=round(final[name], 4))
        for name in STAGE1_CARD_METRICS
        if name in final
    ]  # fmt: skip
    base_models = base_model_ids(args.vision_model, args.bert_model)
    card_data = ModelCardData(
        model_name=model_name, base_model=base_models or None, datasets=datasets or None, library_name="transformers",
        license="apache-2.0", tags=["vision-language", *STAGE_TAGS[args.stage], f"stage-{args.stage}"],
        eval_results=eval_results or None,
    )  # fmt: skip
    objectives = [name.upper() for name in ("itc", "itm", "itg") if getattr(args, f"{name}_weight")]
    losses = [name for name in ("loss", "loss_itc", "loss_itm", "loss_itg") if name in final]
    values = {
        **asdict(args),
        **_results_fields(results),
        "model_name": model_name,
        "towers": args.vision_model or "the tiny random tower (offline)",
        "bert": args.bert_model or ("tiny random BERT" if args.model == "tiny" else "bert-base-uncased"),
        "num_queries": results.num_visual_tokens,
        "loss_name": LOSS_NAMES[args.contrastive_loss],
        "trained_sides": trained_sides(args),
        "objectives": " + ".join(objectives),
        "ranking": f"(top {args.retrieval_rerank_k} re-ranked by ITM)" if args.retrieval_rerank_k else "(ITC only)",
        "history_table": history_table(results.history, [*losses, *(m for m in STAGE1_CARD_METRICS if m in final)]),
        "config_yaml": yaml.safe_dump(asdict(args), sort_keys=False).strip(),
        "repo": args.push_to_hub or output_dir,
    }
    template = CONTRASTIVE_TEMPLATE_PATH if args.stage == CONTRASTIVE else STAGE1_TEMPLATE_PATH
    card = ModelCard.from_template(card_data, template_path=str(template), **values)
    card.save(os.path.join(output_dir, "README.md"))
    return card


def trained_sides(args: VLMTrainingArguments) -> str:
    """What a contrastive run trained, in LiT's terms: each side locked, tuned from the source's weights, or new."""
    if args.lock_image:
        tower = "locked (LiT's locked-image tuning: its pooled features computed once)"
    else:
        tower = "trained from scratch" if args.vision_from_scratch else "tuned from the model source's weights"
    return f"the vision tower {tower}; the text encoder {'locked' if args.lock_text else 'tuned'}"


def _results_fields(results: TrainingResults) -> dict[str, str | int]:
    """The template values taken from the run's results, formatted."""
    return {
        "bridge": _bridge_sentence(results),
        "trainable_parameters": f"{results.trainable_parameters:,}",
        "total_parameters": f"{results.total_parameters:,}",
        "num_train_images": results.num_train_images,
        "num_eval_images": results.num_eval_images,
        "best_metric": format_score(results.best_metric),
        "best_step": results.best_step,
        "saved_model": (
            f"the best model (step {results.saved_step})" if results.saved_step is not None
            else f"the last model (step {results.global_step})"
        ),
        "hardware": results.hardware,
        "num_processes": results.num_processes,
        "distributed_type": results.distributed_type,
        "mixed_precision": results.mixed_precision,
        "wall_time_min": f"{results.wall_time_s / 60:.1f}",
        "train_time_min": f"{results.train_time_s / 60:.1f}",
        "samples_per_second": f"{results.samples_per_second:.1f}",
    }


def _bridge_sentence(results: TrainingResults) -> str:
    """How the card says the image reaches the language model, with the fusion and the tokens per image."""
    layers = ", ".join(map(str, results.cross_attention_layers or []))
    if results.fusion == "hybrid":
        return (
            f"a **{results.projector_type}** projector in **hybrid fusion** (NVLM-H): the whole image's\n"
            f"{results.num_image_tokens} tokens in the language model's input, its tiles read through gated\n"
            f"cross-attention before decoder layers {layers}"
        )
    if results.fusion == "visual_expert":
        return (
            f"a **{results.projector_type}** projector and **visual experts** (deep fusion, as in CogVLM): the\n"
            f"{results.num_image_tokens} image tokens per image in the language model's input go through their own\n"
            f"attention projections and MLP in decoder layers {', '.join(map(str, results.visual_expert_layers or []))}"
        )
    if results.fusion == "tokenized":
        return (
            "a frozen **VQ image tokenizer** (tokenized early fusion, as in Chameleon): each image's\n"
            f"{results.num_image_tokens} discrete codes enter the language model's input through trainable code "
            "embeddings"
        )
    if results.fusion == "adapter":
        return (
            f"a **{results.projector_type}** projector and **gated adaption prompts** (deep fusion, as in\n"
            f"LLaMA-Adapter V2): the {results.num_visual_tokens} visual tokens per image, added to learned prompts,\n"
            "are extra keys and values of the self-attention in decoder layers "
            f"{', '.join(map(str, results.adapter_layers or []))}\n(one marker token per image in the language model's "
            "input)"
        )
    if results.fusion != "cross_attention":
        return f"a **{results.projector_type}** projector\n({results.num_image_tokens} image tokens per image)"
    return (
        f"a **{results.projector_type}** projector read through **gated cross-attention** (deep fusion, as in\n"
        f"Flamingo) before decoder layers {layers} ({results.num_visual_tokens} visual tokens per image as keys and\n"
        "values; one marker token per image in the language model's input)"
    )


def push_output_dir(output_dir: str, repo_id: str, private: bool = False) -> str:
    """Creates `repo_id` if needed and uploads the output dir to it, without checkpoints and the best-model copy."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        commit_message="Upload VLM trained with train_accelerate.py",
        ignore_patterns=[f"{CHECKPOINT_PREFIX}*", f"{TMP_PREFIX}*", f"{BEST_DIR}/*"],
    )
    return repo_id
