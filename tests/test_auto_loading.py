"""
Saved models load through the Auto classes with `trust_remote_code=True` in a fresh process that cannot see the
repository, and give the same logits and tokens. CI runs this file under transformers 5.x and 4.57, and across
versions: `VLM_LOADER_PYTHON` names another environment's interpreter to load what this one saved.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from PIL import Image

from configuration_vlm import PROJECTOR_TYPES
from evaluation.captioning import caption_messages
from models.tiny import TINY_CLIP_VISION_CONFIG, build_tiny_vlm


IMAGE_SIZE = (96, 40)


LOADER = textwrap.dedent(
    """
    import json, sys, warnings
    import torch, transformers
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline

    assert not any(path.endswith("main") or "configuration_vlm" in path for path in sys.path)
    request = json.loads(sys.argv[1])
    image = Image.new("RGB", tuple(request["image_size"]), (220, 30, 30))
    # 4.57 has AutoModelForVision2Seq (deprecated there, still used) and AutoModelForImageTextToText; 5.x only the latter.
    warnings.filterwarnings("ignore", message=".*AutoModelForVision2Seq.* is deprecated")
    auto_classes = ["AutoModelForImageTextToText", "AutoModel"]
    auto_classes += ["AutoModelForVision2Seq"] if hasattr(transformers, "AutoModelForVision2Seq") else []
    results = {"auto_classes": auto_classes, "version": transformers.__version__}
    for directory in request["directories"]:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
        prompt = processor.apply_chat_template(request["messages"], add_generation_prompt=True)
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        result = {"config_class": type(config).__name__, "processor_class": type(processor).__name__}
        result["pixel_values"] = inputs["pixel_values"].flatten().tolist()
        for auto_class in auto_classes:
            model = getattr(transformers, auto_class).from_pretrained(directory, trust_remote_code=True)
            with torch.no_grad():
                logits = model(**inputs).logits
            generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
            result[auto_class] = {"class": type(model).__name__, "logits": logits.flatten().tolist(), "tokens": generated.tolist()}
            # With the image token's logit raised to the top, greedy and sampled generation must still avoid it.
            bias = torch.zeros(config.text_config.vocab_size)
            bias[config.image_token_id] = 100.0
            model.get_output_embeddings().register_forward_hook(lambda module, args, output: output + bias)
            torch.manual_seed(0)
            prompt_length = inputs["input_ids"].shape[1]
            result[auto_class]["biased_new_tokens"] = [
                model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=sample)[0, prompt_length:]
                .tolist()
                for sample in (False, True)
            ]
        chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe the image briefly."}]}]
        captioner = pipeline("image-text-to-text", model=directory, trust_remote_code=True)
        output = captioner(text=chat, max_new_tokens=4, return_full_text=False)
        result["pipeline"] = output[0]["generated_text"]
        results[directory] = result
    print("RESULTS" + json.dumps(results))
    """
)


def load_in_fresh_process(directories: list[str], cwd) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    request = {"directories": directories, "messages": caption_messages(), "image_size": IMAGE_SIZE}
    process = subprocess.run(
        [os.environ.get("VLM_LOADER_PYTHON", sys.executable), "-c", LOADER, json.dumps(request)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert process.returncode == 0, process.stderr[-4000:]
    # Remote code that uses a name its transformers has deprecated (e.g. `past_key_values` under 5.25) says so here.
    deprecations = [line for line in process.stderr.splitlines() if "deprecat" in line.lower()]
    assert not deprecations, deprecations
    return json.loads(process.stdout.split("RESULTS", 1)[1])


def test_save_and_load_with_auto_classes_in_a_fresh_process(tmp_path):
    image = Image.new("RGB", IMAGE_SIZE, (220, 30, 30))  # the loader's: 2 x 1 tiles and a thumbnail with tiles
    expected, pixel_values, directories = {}, {}, []
    clip = {"vision_config": TINY_CLIP_VISION_CONFIG, "vision_feature_layer": -2}
    builds = [(projector_type, "early", {}) for projector_type in PROJECTOR_TYPES] + [
        ("perceiver", "cross_attention", {}),
        ("mlp", "clip-default", {**clip, "vision_feature_select_strategy": "default"}),  # LLaVA-1.5's bridge
        ("qformer", "clip-full", {**clip, "vision_feature_select_strategy": "full"}),
        ("mlp", "tiles", {"max_tiles": 4}),  # dynamic resolution, early fusion: tags and placeholders per tile
        ("perceiver", "cross_attention-tiles", {"fusion": "cross_attention", "max_tiles": 4}),
        ("mlp", "hybrid", {"fusion": "hybrid", "max_tiles": 4}),  # NVLM-H: the thumbnail early, the tiles deep
        ("qformer", "visual_expert", {"fusion": "visual_expert"}),  # CogVLM: the image positions through experts
        ("mlp", "adapter-tiles", {"fusion": "adapter", "adapter_num_layers": 1, "max_tiles": 4}),  # LLaMA-Adapter V2
        ("codebook", "tokenized", {"fusion": "tokenized"}),  # Chameleon: a VQ tokenizer's codes, code embeddings
    ]
    for projector_type, name, settings in builds:
        fusion = "cross_attention" if name == "cross_attention" else "early"
        model, processor = build_tiny_vlm(projector_type, seed=7, **{"fusion": fusion, **settings})
        with torch.no_grad():  # open the gates, so that wrongly loaded blocks or masks would change the logits
            for index, parameter in enumerate(p for n, p in model.named_parameters() if n.endswith("gate")):
                parameter.fill_(0.3 + 0.1 * index)
            for parameter in model.visual_experts.parameters() if model.visual_experts is not None else []:
                parameter.add_(0.05)  # experts unlike the language model's own, so that a lost expert would show
        directory = tmp_path / f"vlm-{projector_type}-{name}"
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        saved = set(os.listdir(directory))
        hub_files = {"configuration_vlm.py", "projectors_vlm.py", "cross_attention_vlm.py", "modeling_vlm.py",
                     "processing_vlm.py", "tiling_vlm.py", "visual_expert_vlm.py", "adapter_vlm.py",
                     "tokenized_vlm.py", "generation_vlm.py", "loading_vlm.py", "loss_vlm.py"}
        assert hub_files | {"model.safetensors"} <= saved
        assert not any(name.endswith(".bin") for name in saved)
        auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
        generation_config = json.loads((directory / "generation_config.json").read_text())
        assert generation_config["suppress_tokens"] == [model.config.image_token_id]
        assert auto_map["AutoModelForVision2Seq"] == auto_map["AutoModelForImageTextToText"] == auto_map["AutoModel"]
        assert auto_map["AutoProcessor"] == "processing_vlm.VLMProcessor"

        prompt = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False).tolist()
        expected[str(directory)] = (logits.flatten().tolist(), tokens, model.config.image_token_id)
        pixel_values[str(directory)] = inputs["pixel_values"].flatten().tolist()
        directories.append(str(directory))

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    results = load_in_fresh_process(directories, cwd=outside)
    assert "AutoModelForImageTextToText" in results["auto_classes"]
    assert ("AutoModelForVision2Seq" in results["auto_classes"]) == results["version"].startswith("4.")
    for directory in directories:
        result = results[directory]
        assert result["config_class"] == "VLMConfig" and result["processor_class"] == "VLMProcessor"
        assert result["pixel_values"] == pixel_values[directory], "the reloaded image processor gives other pixels"
        expected_logits, expected_tokens, image_token_id = expected[directory]
        for auto_class in results["auto_classes"]:
            assert result[auto_class]["class"] == "VLMForConditionalGeneration"
            for new_tokens in result[auto_class]["biased_new_tokens"]:
                assert len(new_tokens) == 4 and image_token_id not in new_tokens, f"{auto_class} generated <image>"
            if results["version"] == transformers.__version__:
                assert result[auto_class]["logits"] == expected_logits, f"{auto_class} logits differ for {directory}"
            else:  # another transformers version computes the same function with slightly different kernels
                torch.testing.assert_close(torch.tensor(result[auto_class]["logits"]), torch.tensor(expected_logits))
            assert result[auto_class]["tokens"] == expected_tokens, f"{auto_class} tokens differ for {directory}"
        assert isinstance(result["pipeline"], str)


@pytest.mark.parametrize("projector_type", ["qformer"])
def test_processor_round_trip_keeps_settings(tmp_path, projector_type):
    model, processor = build_tiny_vlm(projector_type)
    processor.save_pretrained(tmp_path)
    reloaded = transformers.AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert reloaded.num_image_tokens == processor.num_image_tokens == model.config.num_image_tokens
    assert reloaded.image_token == "<image>" and reloaded.image_token_id == model.config.image_token_id
    assert reloaded.chat_template == processor.chat_template
    assert reloaded.tokenizer.padding_side == "left"
    assert reloaded.image_processor.size == processor.image_processor.size
