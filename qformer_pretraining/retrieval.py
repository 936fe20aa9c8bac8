# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Image-text retrieval with a stage-1 Q-Former, BLIP-2's evaluation: rank by the contrastive similarity, optionally
re-rank each query's top k by the matching head, and report Recall@1/5/10 in both directions.
"""

import torch

from .modeling import QFormerForPretraining


RECALL_KS = (1, 5, 10)


def recall_at_k(
    scores: torch.Tensor,
    text_image: torch.LongTensor,
    ks: tuple[int, ...] = RECALL_KS,
    text_scores: torch.Tensor | None = None,
) -> dict[str, float]:
    """
    Retrieval recall from `scores` `(num_images, num_texts)`, where text `t` describes image `text_image[t]`:
    image->text `i2t_R{k}` (an image counts when any of its texts is in its top k), text->image `t2i_R{k}` (from
    `text_scores` of the same shape when the directions were re-ranked apart), and `recall_mean`, the mean of them
    all. A rank is the number of candidates scoring strictly higher; a match scoring `-inf` has none.
    """
    scores = scores.float()
    text_scores = scores if text_scores is None else text_scores.float()
    num_images = scores.shape[0]
    positive = text_image[None, :] == torch.arange(num_images, device=scores.device)[:, None]
    best_positive = scores.masked_fill(~positive, float("-inf")).amax(dim=1)
    # A match that re-ranking left out of the top k scores -inf: it is never recalled.
    image_ranks = (scores > best_positive[:, None]).sum(dim=1).masked_fill(best_positive.isinf(), scores.shape[1])
    true_scores = text_scores.gather(0, text_image[None, :]).squeeze(0)
    text_ranks = (text_scores > true_scores[None, :]).sum(dim=0).masked_fill(true_scores.isinf(), num_images)
    metrics = {f"i2t_R{k}": (image_ranks < k).float().mean().item() for k in ks}
    metrics.update({f"t2i_R{k}": (text_ranks < k).float().mean().item() for k in ks})
    metrics["recall_mean"] = sum(metrics.values()) / len(metrics)
    return metrics


@torch.no_grad()
def rerank_with_matching(
    model: QFormerForPretraining,
    scores: torch.Tensor,
    vision_features: torch.Tensor,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    k: int,
    rows: list[int],
    by_text: bool = False,
) -> torch.Tensor:
    """
    BLIP-2's re-ranking for the query rows `rows` of `scores` `(num_images, num_texts)` (image rows, or with
    `by_text` text columns): each query's top `k` candidates by `scores` get their matching logit added to the
    score, the others `-inf`. `vision_features` `(num_images, num_patches, vision_dim)` and the tokenized texts
    `(num_texts, text_length)` are those `scores` ranks. Returns `(len(rows), num_candidates)`.
    """
    table = scores.T if by_text else scores
    reranked = torch.full((len(rows), table.shape[1]), float("-inf"), device=scores.device)
    device = model.query_tokens.device
    for out_row, row in enumerate(rows):
        top = table[row].topk(min(k, table.shape[1])).indices
        query = torch.full_like(top, row)
        images, texts = (top, query) if by_text else (query, top)
        logits = model.matching_logits(
            vision_features[images.cpu()].to(device), input_ids[texts].to(device), attention_mask[texts].to(device)
        )
        reranked[out_row, top] = table[row, top] + logits[:, 1].to(reranked.dtype)
    return reranked
