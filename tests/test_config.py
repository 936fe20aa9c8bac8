"""VLMConfig: defaults from seed 000, serialisation, and errors that name the field, the value and the fix."""

import re

import pytest
from transformers import AutoConfig, Qwen2Config, SiglipVisionConfig
from transformers.activations import ACT2FN

from configuration_vlm import VLMConfig


def test_defaults_are_siglip_base_and_qwen25_05b():
    config = VLMConfig()
    assert isinstance(config.vision_config, SiglipVisionConfig) and isinstance(config.text_config, Qwen2Config)
    assert (config.vision_config.hidden_size, config.vision_config.image_size, config.vision_config.patch_size) == (768, 224, 16)
    assert (config.text_config.hidden_size, config.text_config.vocab_size, config.text_config.num_hidden_layers) == (896, 151936, 24)
    assert config.projector_type == "mlp" and config.vision_feature_layer == -1
    assert config.tie_word_embeddings


@pytest.mark.parametrize(
    ("projector_type", "num_image_tokens"), [("linear", 196), ("mlp", 196), ("qformer", 32), ("perceiver", 64)]
)
def test_num_image_tokens(projector_type, num_image_tokens):
    assert VLMConfig(projector_type=projector_type).num_image_tokens == num_image_tokens


def test_round_trip_through_json(tmp_path):
    config = VLMConfig(projector_type="perceiver", perceiver_num_latents=16, vision_feature_layer=-2, image_token_id=7)
    config.save_pretrained(tmp_path)
    reloaded = VLMConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert isinstance(reloaded.vision_config, SiglipVisionConfig) and reloaded.num_image_tokens == 16
    assert AutoConfig.for_model("qwen2").model_type == reloaded.text_config.model_type


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"projector_type": "resampler"}, r"Unknown projector_type='resampler'; choose one of 'linear', 'mlp', 'qformer', 'perceiver'"),
        ({"qformer_num_queries": 0}, r"qformer_num_queries=0 is invalid; it must be a positive integer"),
        ({"perceiver_num_layers": 1.5}, r"perceiver_num_layers=1.5 is invalid; it must be a positive integer"),
        ({"projector_type": "perceiver", "perceiver_num_heads": 7}, r"perceiver_num_heads=7 is invalid; it must divide the vision hidden size \(768\)"),
        ({"projector_type": "qformer", "qformer_num_heads": 5}, r"qformer_num_heads=5 is invalid; it must divide the Q-Former width \(768\)"),
        ({"projector_type": "qformer", "qformer_hidden_size": 512, "qformer_num_heads": 12}, r"qformer_num_heads=12 is invalid; it must divide the Q-Former width \(512\)"),
        ({"qformer_hidden_size": 0}, r"qformer_hidden_size=0 is invalid; it must be a positive integer \(or None\)"),
        ({"loss_chunk_size": 0}, r"loss_chunk_size=0 is invalid; it must be a positive integer \(or None\)"),
        ({"vision_feature_layer": 12}, r"vision_feature_layer=12 is invalid; it must be an integer in \[-13, 11\]"),
        ({"projector_dropout": 1.0}, r"projector_dropout=1.0 is invalid; it must be in \[0, 1\)"),
        ({"projector_dropout": "0.1"}, r"projector_dropout='0.1' is invalid; it must be in \[0, 1\)"),
        ({"image_token_id": -1}, r"image_token_id=-1 is invalid; it must be a token id \(an integer >= 0\)"),
        ({"image_token_id": "151665"}, r"image_token_id='151665' is invalid; it must be a token id"),
        ({"image_token": ""}, r"image_token='' is invalid; it must be a non-empty string"),
        ({"cross_attention_every": "4"}, r"cross_attention_every='4' is invalid; it must be a positive integer"),
        ({"vision_config": {"hidden_size": 8}}, r"`vision_config` must be a PretrainedConfig or a dict with a 'model_type' key"),
        (
            {"projector_hidden_act": "nonsense"},
            re.escape(
                f"projector_hidden_act='nonsense' is invalid; choose one of {', '.join(map(repr, sorted(ACT2FN)))} "
                "(the keys of transformers.activations.ACT2FN)."
            ),
        ),
        ({"projector_type": "linear", "projector_hidden_act": None}, r"projector_hidden_act=None is invalid"),
    ],
)
def test_invalid_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VLMConfig(**kwargs)


def rope_base(text_config) -> float:
    """The RoPE base the language model uses: `rope_parameters["rope_theta"]` in 5.x, `rope_theta` in 4.x."""
    parameters = getattr(text_config, "rope_parameters", None)
    return parameters["rope_theta"] if parameters else text_config.rope_theta


def test_rope_base_is_written_for_transformers_4_readers():
    """5.x keeps `rope_theta` inside `rope_parameters`; 4.x reads only the top-level key and would default to 10,000."""
    assert VLMConfig().to_dict()["text_config"]["rope_theta"] == 1000000.0
    reloaded = VLMConfig.from_dict(VLMConfig().to_dict())
    assert rope_base(reloaded.text_config) == 1000000.0
    assert reloaded.to_dict()["text_config"]["rope_theta"] == 1000000.0  # still written after a round trip
