"""
BLIP-2's stage 1 at the model level (offline, tiny BERT and tiny tower built here): the three attention masks, what
they do inside the Q-Former, the three losses learning a handful of synthetic pairs, retrieval recall, and where the
BERT weights land.
"""

import pytest
import torch

from models.tiny import build_tiny_bert, build_tiny_vlm
from qformer_pretraining import QFormerForPretraining, build_qformer_pretraining
from qformer_pretraining.bert_init import bert_parameter_map
from qformer_pretraining.masks import attention_pattern
from qformer_pretraining.objectives import sample_hard_negatives
from qformer_pretraining.retrieval import recall_at_k


PAIRS = [
    "a red circle on the left", "a blue square at the top", "a big green star at the top",
    "a small yellow cross in the middle", "a purple triangle on the right", "an orange disc at the bottom",
    "a white box in the centre", "a black dot on the left",
]  # fmt: skip


def build_stage1(bert_seed: int = 0, seed: int = 0, **kwargs):
    vlm, processor = build_tiny_vlm("qformer")
    bert, tokenizer = build_tiny_bert(bert_seed)
    torch.manual_seed(seed)
    model, stage1_processor = build_qformer_pretraining(
        vlm.vision_tower, processor.image_processor, bert, tokenizer, "tiny", num_query_tokens=4, **kwargs
    )
    return model, stage1_processor, bert


def test_each_mask_has_the_documented_pattern():
    text_mask = torch.tensor([[1, 1, 0]])  # two queries, then [CLS] w, and one padding position
    expected = {
        "unimodal": [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 0],
        ],
        "bidirectional": [[1, 1, 1, 1, 0]] * 5,
        "multimodal_causal": [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
        ],
    }
    for kind, pattern in expected.items():
        assert attention_pattern(kind, 2, text_mask)[0].int().tolist() == pattern, kind
    with pytest.raises(ValueError, match="Unknown mask kind 'causal'; choose one of unimodal, bidirectional"):
        attention_pattern("causal", 2, text_mask)


def test_the_masks_decide_who_sees_whom_inside_the_qformer():
    model, processor, _ = build_stage1()
    model.eval()
    tokens = processor(text=["a red circle on the left", "a blue square"])
    other = processor(text=["a red circle on the top", "a blue square"])  # differs at the text's 5th token
    features = torch.randn(2, 16, 32)
    queries = model.config.num_query_tokens
    with torch.no_grad():
        joint = model.run_qformer(features, tokens["input_ids"], tokens["attention_mask"], "unimodal")
        # Uni-modal: exactly the queries alone and the text alone.
        torch.testing.assert_close(joint[:, :queries], model.run_qformer(features))
        text_alone = model.run_qformer(None, tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(joint[:, queries:], text_alone)
        # Multimodal causal: queries and the text before a change do not see it; the text after it does.
        causal = model.run_qformer(features, tokens["input_ids"], tokens["attention_mask"], "multimodal_causal")
        changed = model.run_qformer(features, other["input_ids"], other["attention_mask"], "multimodal_causal")
        torch.testing.assert_close(causal[0, : queries + 5], changed[0, : queries + 5])
        assert not torch.allclose(causal[0, queries + 5 :], changed[0, queries + 5 :])
        # The text sees the image there; under the uni-modal mask it does not.
        shuffled = features.flip(0)
        assert not torch.allclose(
            causal[:, queries:],
            model.run_qformer(shuffled, tokens["input_ids"], tokens["attention_mask"], "multimodal_causal")[
                :, queries:
            ],
        )
        # Bi-directional: the queries read the text.
        both = model.run_qformer(features, tokens["input_ids"], tokens["attention_mask"], "bidirectional")
        both_changed = model.run_qformer(features, other["input_ids"], other["attention_mask"], "bidirectional")
        assert not torch.allclose(both[0, :queries], both_changed[0, :queries])


def test_each_loss_falls_and_retrieval_beats_chance_on_a_handful_of_synthetic_pairs():
    model, processor, _ = build_stage1()
    tokens = processor(text=PAIRS)
    features = torch.randn(len(PAIRS), 16, 32, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    model.vision_tower.requires_grad_(False)
    first = model(**tokens, vision_features=features)
    for _ in range(300):
        outputs = model(**tokens, vision_features=features)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        last = model(**tokens, vision_features=features)
        scores = torch.einsum("iqd,td->itq", model.image_embeddings(features), model.text_embeddings(**tokens)).amax(-1)
    assert first.loss_itc > 2.0 and last.loss_itc < 1.0  # ln 8 = 2.08 is chance
    assert first.loss_itm > 0.6 and last.loss_itm < 0.3  # 0.64 is the entropy of 1 match in 3 pairs
    assert first.loss_itg > 4.0 and last.loss_itg < 2.0
    recall = recall_at_k(scores, torch.arange(len(PAIRS)))
    assert recall["i2t_R1"] >= 0.75 and recall["t2i_R1"] >= 0.75  # chance: 1/8


def test_switched_off_objectives_are_not_computed_and_the_loss_is_the_weighted_sum():
    model, processor, _ = build_stage1(itm_weight=0.0, itg_weight=2.0)
    tokens = processor(text=PAIRS[:3])
    outputs = model(**tokens, vision_features=torch.randn(3, 16, 32))
    assert outputs.loss_itm is None
    torch.testing.assert_close(outputs.loss, outputs.loss_itc + 2.0 * outputs.loss_itg)
    with pytest.raises(ValueError, match="itc_weight, itm_weight and itg_weight are all 0"):
        build_stage1(itc_weight=0.0, itm_weight=0.0, itg_weight=0.0)
    with pytest.raises(ValueError, match=r"itm_weight=-1.0 is invalid; it must be a number >= 0"):
        build_stage1(itm_weight=-1.0)


def test_hard_negatives_never_draw_the_positive_or_an_identical_caption():
    similarity = torch.tensor([[9.0, 8.0, 1.0], [8.0, 9.0, 1.0], [1.0, 1.0, 9.0]])
    excluded = torch.eye(3, dtype=torch.bool)
    excluded[0, 1] = excluded[1, 0] = True  # captions 0 and 1 are the same text
    for _ in range(20):
        drawn = sample_hard_negatives(similarity, excluded).tolist()
        assert drawn[:2] == [2, 2] and drawn[2] in (0, 1)
    alone = sample_hard_negatives(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool))
    assert alone.tolist() == [-1]


def test_recall_at_k_counts_any_reference_for_images_and_never_recalls_a_match_re_ranking_dropped():
    # 2 images, 3 texts: texts 0 and 1 describe image 0, text 2 image 1.
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
    recall = recall_at_k(scores, torch.tensor([0, 0, 1]), ks=(1, 2))
    assert recall["i2t_R1"] == 0.5  # image 0's best text is its own; image 1 ranks text 2 third
    assert recall["t2i_R1"] == pytest.approx(1 / 3)  # only text 1 ranks its image first
    assert recall["t2i_R2"] == 1.0
    dropped = torch.tensor([[float("-inf"), float("-inf"), 0.5], [float("-inf"), 0.2, float("-inf")]])
    assert recall_at_k(dropped, torch.tensor([0, 0, 1]), ks=(2,))["i2t_R2"] == 0.0


def test_bert_weights_land_in_the_mapped_parameters_and_nowhere_else():
    model_a, _, bert_a = build_stage1(bert_seed=1)
    model_b, _, bert_b = build_stage1(bert_seed=2)
    mapping = bert_parameter_map(bert_a.config.num_hidden_layers)
    ours_a, ours_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    initialised = {name for names in mapping.values() for name in names}
    for ours, bert in ((ours_a, bert_a), (ours_b, bert_b)):
        bert_state = bert.state_dict()
        for bert_name, names in mapping.items():
            for name in names:
                value = ours[name][: bert_state[bert_name].shape[0]] if "word_embeddings" in name else ours[name]
                assert torch.equal(value, bert_state[bert_name]), name
    assert {n.split(".")[0] for n in initialised} == {"embeddings", "qformer"}
    assert any("intermediate_query" in n for n in initialised) and any(".intermediate." in n for n in initialised)
    for name, parameter in ours_a.items():
        if name not in initialised:  # another BERT changes nothing here: cross-attention, queries, heads, tower
            assert torch.equal(parameter, ours_b[name]), name
    assert any("crossattention" in n for n in ours_a) and not any("crossattention" in n for n in initialised)


def test_a_bert_that_does_not_fit_the_qformer_names_both_shapes():
    with pytest.raises(
        ValueError,
        match=r"The BERT checkpoint 'tiny' has 2 layers of width 32 \(2 heads, FFN 128\), but the Q-Former is "
        r"configured with 3 layers of width 32 \(2 heads, FFN 128\) \(num_hidden_layers differ\)",
    ):
        build_stage1(shape={"qformer_num_layers": 3})
    with pytest.raises(ValueError, match=r"configured with 2 layers of width 64 \(2 heads, FFN 128\)"):
        build_stage1(shape={"qformer_hidden_size": 64})


def test_a_stage1_model_saves_and_loads(tmp_path):
    model, processor, _ = build_stage1()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = QFormerForPretraining.from_pretrained(tmp_path).eval()
    tokens = processor(text=PAIRS[:2])
    features = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_embeddings(features), model.eval().image_embeddings(features))
        torch.testing.assert_close(loaded.text_embeddings(**tokens), model.text_embeddings(**tokens))
