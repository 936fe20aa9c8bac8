"""
Stage contrastive (seed 001's first stage): the dual encoder built on transformers' `VisionTextDualEncoderModel`
trains through the same loop as every run, with either loss, evaluated by retrieval, saved, reloaded and resumed.
"""


import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from contrastive_pretraining import ContrastiveDualEncoder, build_dual_encoder
from contrastive_pretraining.losses import CLIP_LOGIT_SCALE_INIT, SIGLIP_LOGIT_SCALE_INIT, clip_loss, sigmoid_loss
from data.captions import make_shapes_dataset
from models.tiny import TINY_CLIP_VISION_CONFIG, build_tiny_bert, build_tiny_vlm
from tiny_runs import assert_same_weights, saved_weights, tiny_args
from training import train
from training.arguments import DEFAULT_MAX_CAPTION_TOKENS
from training.model_setup import build_contrastive_model, prepare_model_for_training
from training.pair_data import PairCollator
from training.text_feature_cache import load_or_compute_text_features


TEXTS = ["a red circle on the left.", "a blue square at the top.", "two green triangles.", "a small yellow star."]


def dual_encoder(loss: str) -> tuple[ContrastiveDualEncoder, dict]:
    vlm, processor = build_tiny_vlm("mlp")
    bert, tokenizer = build_tiny_bert()
    torch.manual_seed(0)
    model = build_dual_encoder(vlm.vision_tower, bert, loss, projection_dim=16)
    inputs = dict(tokenizer(TEXTS, padding=True, return_token_type_ids=False, return_tensors="pt"))
    inputs["pixel_values"] = torch.randn(len(TEXTS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, inputs


@pytest.mark.parametrize("loss", ["clip", "sigmoid"])
def test_the_dual_encoder_trains_with_its_loss_and_reloads_equal(tmp_path, loss):
    model, inputs = dual_encoder(loss)
    outputs = model(**inputs)
    if loss == "clip":
        assert model.logit_bias is None and model.logit_scale.item() == pytest.approx(CLIP_LOGIT_SCALE_INIT)
        expected = clip_loss(outputs.image_embeds, outputs.text_embeds, model.logit_scale)
    else:
        assert model.logit_scale.item() == pytest.approx(SIGLIP_LOGIT_SCALE_INIT) and model.logit_bias.item() == -10
        expected = sigmoid_loss(outputs.image_embeds, outputs.text_embeds, model.logit_scale, model.logit_bias)
    torch.testing.assert_close(outputs.loss, expected)
    assert outputs.image_embeds.shape == outputs.text_embeds.shape == (4, 16)
    assert torch.allclose(outputs.image_embeds.norm(dim=-1), torch.ones(4))
    outputs.loss.backward()
    assert model.logit_scale.grad != 0 and model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0

    model.save_pretrained(tmp_path)
    reloaded, info = ContrastiveDualEncoder.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and reloaded.config.contrastive_loss == loss
    torch.testing.assert_close(reloaded(**inputs).loss, outputs.loss)


def test_a_batch_of_one_pair_is_refused_and_an_unknown_loss_too():
    model, inputs = dual_encoder("clip")
    with pytest.raises(ValueError, match="A contrastive batch of one pair has no negatives"):
        model(**{name: value[:1] for name, value in inputs.items()})
    model.config.contrastive_loss = "triplet"
    with pytest.raises(ValueError, match="contrastive_loss='triplet' is invalid; choose 'clip'"):
        ContrastiveDualEncoder(model.config)


def test_a_text_encoder_that_cannot_pool_is_refused():
    model, inputs = dual_encoder("clip")
    model.text_model.forward = lambda **kwargs: {"pooler_output": None}
    with pytest.raises(ValueError, match="returns no last_hidden_state to pool its first token from"):
        model(**inputs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"contrastive_loss": "triplet"}, "contrastive_loss='triplet' is invalid; choose 'clip' or 'sigmoid'"),
        ({"retrieval_rerank_k": 4}, "no matching head to re-rank with"),
        ({"stage": "align", "lock_text": True}, "lock_text is an option of stage contrastive; this run's stage"),
        ({"stage": "align", "lock_image": True}, "lock_image is an option of stage contrastive; this run's stage"),
        ({"lock_image": True, "vision_from_scratch": True}, "would keep a random tower frozen"),
    ],
)
def test_invalid_contrastive_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_args(tmp_path, **{"stage": "contrastive", **overrides})


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    """CLIP's loss on 3,000 shapes captions, 8 epochs: 376 steps of 64 pairs, the tiny tower and BERT training."""
    tmp_path = tmp_path_factory.mktemp("contrastive")
    args = tiny_args(
        tmp_path, stage="contrastive", contrastive_loss="clip", max_train_samples=3000, max_eval_samples=50,
        num_train_epochs=8, per_device_train_batch_size=64, learning_rate=1e-3, eval_strategy="epoch",
        eval_before_training=True, output_dir=str(tmp_path / "contrastive"),
    )  # fmt: skip
    return args, train(args)


def test_a_tiny_contrastive_run_lifts_retrieval_well_above_chance(contrastive_run):
    args, results = contrastive_run
    untrained, trained = results.history[0], results.history[-1]
    # 50 images with 5 captions each: by chance, image->text Recall@1 is 1/50 and Recall@10 10/50.
    assert untrained["i2t_R1"] <= 0.02 and untrained["i2t_R10"] <= 0.2
    assert trained["i2t_R1"] >= 0.06 and trained["i2t_R10"] >= 0.4 and trained["t2i_R10"] >= 0.3
    assert trained["loss"] < untrained["loss"] - 0.3  # the validation InfoNCE, per pair
    output_dir = Path(args.output_dir)
    card = (output_dir / "README.md").read_text()
    assert "symmetric InfoNCE loss of CLIP" in card and "contrastive" in card
    reloaded = ContrastiveDualEncoder.from_pretrained(output_dir)
    assert reloaded.config.contrastive_loss == "clip" and results.projector_type == "none"


def test_the_hand_off_gives_a_new_vlm_the_trained_tower_and_the_cache_its_features(contrastive_run, tmp_path):
    args, _ = contrastive_run
    trained_tower = ContrastiveDualEncoder.from_pretrained(args.output_dir).vision_model.state_dict()
    common = {"max_train_samples": 16, "max_steps": 1, "feature_cache_dir": str(tmp_path / "cache")}
    plain = train(tiny_args(tmp_path, output_dir=str(tmp_path / "plain"), **common))
    handed = train(tiny_args(tmp_path, output_dir=str(tmp_path / "handed"), vision_init=args.output_dir, **common))
    assert plain.feature_cache["train"] == "computed"
    assert handed.feature_cache["train"] == "computed"  # another tower: the plain run's features are not served
    weights = saved_weights(tmp_path / "handed")
    tower = {name.removeprefix("vision_tower."): v for name, v in weights.items() if name.startswith("vision_tower.")}
    assert_same_weights(tower, trained_tower)
    config = json.loads((tmp_path / "handed" / "config.json").read_text())
    assert config["vision_init"] == args.output_dir
    card = (tmp_path / "handed" / "README.md").read_text()
    assert f"the vision tower trained contrastively in `{args.output_dir}`" in card


def test_a_vision_init_of_another_tower_is_refused_naming_the_field(tmp_path):
    clip_vlm, _ = build_tiny_vlm("mlp", vision_config=TINY_CLIP_VISION_CONFIG)
    bert, _ = build_tiny_bert()
    build_dual_encoder(clip_vlm.vision_tower, bert, "clip", projection_dim=16).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match=r"its vision tower has model_type='clip_vision_model', this VLM's tower"):
        train(tiny_args(tmp_path, vision_init=str(tmp_path / "clip")))
    with pytest.raises(ValueError, match="vision_init=.* gives a new VLM the tower of stage contrastive"):
        tiny_args(tmp_path, stage="contrastive", vision_init=str(tmp_path / "clip"))


def test_a_locked_text_encoders_cached_features_train_as_its_passes_do(tmp_path):
    """LiT's locked text: every reference encoded once; every epoch reads its draw; the run equals the uncached one."""
    common = {"stage": "contrastive", "max_train_samples": 48, "num_train_epochs": 3, "lock_text": True,
              "feature_cache_dir": str(tmp_path / "cache")}  # fmt: skip
    cached = train(tiny_args(tmp_path, output_dir=str(tmp_path / "cached"), **common))
    again = train(tiny_args(tmp_path, output_dir=str(tmp_path / "again"), **common))
    read = train(tiny_args(tmp_path, output_dir=str(tmp_path / "read"), cache_vision_features=False, **common))
    assert cached.feature_cache["train texts"] == "computed" and again.feature_cache["train texts"] == "hit"
    assert read.feature_cache["train texts"] is None
    assert len(list((tmp_path / "cache").glob("text-*.safetensors"))) == 1
    # Padded otherwise, the features differ in the 7th digit, which Adam's normalised steps grow on the attention
    # biases that get next to no gradient; every weight stays within 1e-3 of the uncached run's.
    assert_same_weights(saved_weights(tmp_path / "cached"), saved_weights(tmp_path / "read"), atol=1e-3)
    assert_same_weights(saved_weights(tmp_path / "again"), saved_weights(tmp_path / "cached"), atol=0)
    model, processor = build_contrastive_model(tiny_args(tmp_path, **common))
    prepare_model_for_training(model, tiny_args(tmp_path, **common)).train()
    captions = make_shapes_dataset(48, split="train")["captions"]
    collator = PairCollator(processor, DEFAULT_MAX_CAPTION_TOKENS)
    cache = load_or_compute_text_features(model, collator.tokenize, captions, Accelerator(), tmp_path / "cache")
    assert cache.cache_hit and cache.features.shape == (sum(map(len, captions)), 32)
    for row, reference in [(0, 0), (5, 2), (47, len(captions[47]) - 1)]:
        with torch.no_grad():
            expected = model.pooled_text_features(**collator.tokenize([captions[row][reference]]))[0]
        torch.testing.assert_close(cache.of(row, reference), expected, atol=1e-6, rtol=0)


def test_a_contrastive_run_resumes_mid_epoch_to_the_uninterrupted_result(tmp_path):
    args = tiny_args(
        tmp_path, stage="contrastive", contrastive_loss="sigmoid", max_train_samples=48, save_steps=3,
        save_total_limit=5, num_train_epochs=2, lock_text=True, output_dir=str(tmp_path / "straight"),
    )  # fmt: skip
    straight = train(args)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed_dir / "checkpoint-3")
    train(replace(args, output_dir=str(resumed_dir), resume_from_checkpoint="latest"))
    assert straight.global_step == 12
    expected = saved_weights(tmp_path / "straight")
    assert_same_weights(saved_weights(resumed_dir), expected)
    for name, tensor in build_tiny_bert()[0].state_dict().items():  # lock_text: the text encoder kept its weights
        if "pooler" not in name:
            assert torch.equal(expected[f"text_model.{name}"], tensor), name


def test_locked_image_tuning_trains_on_cached_pooled_features_as_on_the_images(tmp_path):
    """LiT: the tower frozen, its pooled features computed once; the run equals one that reads the images."""
    common = {"stage": "contrastive", "max_train_samples": 48, "max_eval_samples": 16, "num_train_epochs": 2,
              "lock_image": True, "eval_strategy": "epoch", "feature_cache_dir": str(tmp_path / "cache")}  # fmt: skip
    cached = train(tiny_args(tmp_path, output_dir=str(tmp_path / "cached"), **common))
    again = train(tiny_args(tmp_path, output_dir=str(tmp_path / "again"), **common))
    read = train(tiny_args(tmp_path, output_dir=str(tmp_path / "read"), cache_vision_features=False, **common))
    assert cached.feature_cache == {"train": "computed", "eval": "computed"}
    assert again.feature_cache == {"train": "hit", "eval": "hit"} and read.feature_cache["train"] is None
    weights = saved_weights(tmp_path / "cached")
    assert_same_weights(weights, saved_weights(tmp_path / "read"), atol=1e-5)
    tower = build_tiny_vlm("mlp")[0].vision_tower.state_dict()
    for name, tensor in tower.items():  # locked: the tower kept its weights; the text side and the heads trained
        assert torch.equal(weights[f"vision_model.{name}"], tensor), name
    bert = build_tiny_bert()[0].state_dict()
    assert not torch.equal(weights["text_model.embeddings.word_embeddings.weight"],
                           bert["embeddings.word_embeddings.weight"])  # fmt: skip
    assert cached.history[-1]["i2t_R10"] == pytest.approx(read.history[-1]["i2t_R10"])
    card = (tmp_path / "cached" / "README.md").read_text()
    assert "the vision tower locked (LiT's locked-image tuning" in card and "the text encoder tuned" in card


def test_a_tower_trained_from_scratch_starts_from_fresh_weights_of_its_architecture(tmp_path):
    vlm, processor = build_tiny_vlm("mlp")
    with torch.no_grad():  # a "pretrained" checkpoint: weights no random initialisation gives
        for parameter in vlm.vision_tower.parameters():
            parameter.add_(1.0)
    vlm.vision_tower.save_pretrained(tmp_path / "vision")
    processor.image_processor.save_pretrained(tmp_path / "vision")
    bert, tokenizer = build_tiny_bert()
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    sources = {"model": None, "vision_model": str(tmp_path / "vision"), "bert_model": str(tmp_path / "bert")}
    pretrained = vlm.vision_tower.state_dict()
    tuned, _ = build_contrastive_model(tiny_args(tmp_path, stage="contrastive", **sources))
    assert_same_weights(tuned.vision_model.state_dict(), pretrained)
    scratch_args = tiny_args(tmp_path, stage="contrastive", vision_from_scratch=True, **sources)
    fresh, _ = build_contrastive_model(scratch_args)
    weights = fresh.vision_model.state_dict()
    assert weights.keys() == pretrained.keys()
    assert all(weights[name].shape == pretrained[name].shape for name in pretrained)
    for name in ("embeddings.patch_embedding.weight", "encoder.layers.0.self_attn.q_proj.weight"):
        assert (weights[name] - pretrained[name]).abs().min() > 0, name  # every weight re-drawn
    assert_same_weights(weights, build_contrastive_model(scratch_args)[0].vision_model.state_dict())  # the seed's
    model = prepare_model_for_training(fresh, scratch_args)
    assert all(parameter.requires_grad for parameter in model.vision_model.parameters())
