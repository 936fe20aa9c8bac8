# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Evaluation of a Q-Former stage-1 run: the validation losses of its objectives and BLIP-2's retrieval metrics
(image->text and text->image Recall@1/5/10 by the contrastive similarity, optionally re-ranked by the matching head).
"""

import torch
from accelerate import Accelerator
from torch import nn

from qformer_pretraining.objectives import query_text_similarity
from qformer_pretraining.retrieval import recall_at_k, rerank_with_matching

from .evaluation import check_still_readable
from .model_setup import bare_model
from .pair_data import RetrievalEvalSet


LOSS_NAMES = ("loss", "loss_itc", "loss_itm", "loss_itg")


def evaluate_retrieval(
    accelerator: Accelerator, model: nn.Module, eval_set: RetrievalEvalSet, rerank_k: int = 0, batch_size: int = 64
) -> dict[str, float]:
    """
    The stage-1 metrics, the same on every process: the objectives' losses per validation pair (batches of the
    evaluation batch size; the matching negatives drawn without touching the training's random state) and the
    retrieval recalls (see [`~qformer_pretraining.retrieval.recall_at_k`]), re-ranked with `rerank_k`.
    """
    model.eval()
    unwrapped = bare_model(accelerator, model)
    with torch.no_grad():
        metrics, image_embeds = validation_losses(accelerator, model, eval_set)
        text_embeds = torch.cat(
            [
                unwrapped.text_embeddings(
                    eval_set.input_ids[start : start + batch_size].to(accelerator.device),
                    eval_set.attention_mask[start : start + batch_size].to(accelerator.device),
                )
                for start in range(0, len(eval_set.input_ids), batch_size)
            ]
        )
        scores = query_text_similarity(image_embeds, text_embeds)
        text_scores = scores
        if rerank_k:
            scores, text_scores = rerank(accelerator, unwrapped, eval_set, scores, rerank_k)
    metrics.update(recall_at_k(scores, eval_set.text_image.to(scores.device), text_scores=text_scores))
    model.train()
    return metrics


def validation_losses(
    accelerator: Accelerator, model: nn.Module, eval_set: RetrievalEvalSet
) -> tuple[dict[str, float], torch.Tensor]:
    """
    The mean losses over the validation pairs of every process, and the query embeddings of every image `(num_images,
    num_queries, dim)`, in row order on every process.
    """
    unwrapped = bare_model(accelerator, model)
    totals = torch.zeros(len(LOSS_NAMES) + 1, device=accelerator.device)
    image_embeds = []
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for batch in eval_set.pair_loader:
            check_still_readable(batch.pop("num_skipped_images"))
            outputs = model(**batch)
            size = len(batch["input_ids"])
            for index, name in enumerate(LOSS_NAMES):
                value = getattr(outputs, name, None)  # a contrastive dual encoder has the one loss only
                totals[index] += 0.0 if value is None else value.float() * size
            totals[-1] += size
            features = batch.get("vision_features")
            if features is None:
                features = unwrapped.get_vision_features(batch["pixel_values"])
            image_embeds.append(accelerator.gather_for_metrics(unwrapped.image_embeddings(features)))
    totals = accelerator.reduce(totals, reduction="sum")
    reported = {"loss", *(f"loss_{name}" for name in unwrapped.config.active_objectives)}
    metrics = {name: (totals[i] / totals[-1]).item() for i, name in enumerate(LOSS_NAMES) if name in reported}
    return metrics, torch.cat(image_embeds)


def rerank(
    accelerator: Accelerator, model: nn.Module, eval_set: RetrievalEvalSet, scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `(image->text scores, text->image scores)`, both `(num_images, num_texts)`, after re-ranking each query's top `k`
    with the matching head; the queries are shared out over the processes.
    """
    features = eval_set.features.features[eval_set.feature_rows]
    tokens = (eval_set.input_ids, eval_set.attention_mask)
    tables = []
    for by_text, num_queries in ((False, scores.shape[0]), (True, scores.shape[1])):
        with accelerator.split_between_processes(list(range(num_queries))) as rows:
            part = rerank_with_matching(model, scores, features, *tokens, k, rows, by_text=by_text)
        table = torch.cat(accelerator.gather_for_metrics([part.cpu()], use_gather_object=True)).to(scores.device)
        tables.append(table.T if by_text else table)
    return tables[0], tables[1]
