"""
ONNX export (`export_onnx.py`, `onnx_export/`): each exportable kind of tiny model (early fusion with the MLP, the
Q-Former's with tiles; visual-expert and tokenized fusion) is exported once, into the layout transformers.js loads, and
onnxruntime's greedy generation writes PyTorch's tokens with next-token logits within `LOGIT_TOLERANCE`; the other
projectors' early-fusion models differ from the MLP's in their vision encoder only, which gives PyTorch's image
features; the fusions the layout cannot express and the command line's usage errors end with a message.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from transformers import AutoConfig, AutoProcessor

import export_onnx
from data.images import noise_images
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import build_tiny_vlm
from onnx_export import export
from onnx_export.parity import check_parity
from onnx_export.runtime import OnnxVLM
from processing_vlm import VLMProcessor


LOGIT_TOLERANCE = 1e-4  # float32 on both sides; measured up to 6e-7 on these models
FEATURE_TOLERANCE = 1e-5  # measured up to 3e-7 (features up to 1.4)
# Each export's projector and overrides of the tiny model's config. "mlp" goes through the command line.
EXPORTS = {
    "mlp": ("mlp", {}),
    "qformer_tiles": ("qformer", {"max_tiles": 4}),
    "visual_expert": ("mlp", {"fusion": "visual_expert"}),
    "tokenized": ("codebook", {"fusion": "tokenized"}),
}
REFUSED = {
    "cross_attention": ("perceiver", {"fusion": "cross_attention"}),
    "hybrid": ("perceiver", {"fusion": "hybrid", "max_tiles": 4}),
    "adapter": ("mlp", {"fusion": "adapter"}),
}


@dataclass
class Exported:
    model: VLMForConditionalGeneration
    processor: VLMProcessor
    directory: Path
    runtime: OnnxVLM


def varied_tiny_vlm(projector_type: str, **overrides) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """
    A tiny VLM with its weights redrawn at std 0.2: at the default initialisation greedy decoding repeats one token,
    and the visual experts equal the layers they copy, which would hide a wrong cache or a wrong routing.
    """
    model, processor = build_tiny_vlm(projector_type, **overrides)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model, processor


@pytest.fixture(scope="module", params=list(EXPORTS))
def exported(request, tmp_path_factory) -> Exported:
    model, processor = varied_tiny_vlm(EXPORTS[request.param][0], **EXPORTS[request.param][1])
    directory = tmp_path_factory.mktemp(f"onnx-{request.param}")
    if request.param == "mlp":
        saved = tmp_path_factory.mktemp("saved-mlp")
        model.save_pretrained(saved)
        processor.save_pretrained(saved)
        export_onnx.main(["--model", str(saved), "--output_dir", str(directory)])
    else:
        export.export_onnx(model, processor, directory)
    return Exported(model, processor, directory, OnnxVLM(directory, num_threads=1))


def io_names(path: Path) -> tuple[list[str], list[str]]:
    graph = onnx.load(path, load_external_data=False).graph
    return [node.name for node in graph.input], [node.name for node in graph.output]


def test_the_export_is_the_transformers_js_layout(exported):
    files = {path.relative_to(exported.directory).as_posix() for path in exported.directory.rglob("*")}
    graphs = {f"onnx/{name}.onnx" for name in ("vision_encoder", "embed_tokens", "decoder_model_merged")}
    beside = {"config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json"}
    assert graphs | beside <= files and not any(name.endswith(".safetensors") for name in files)
    assert io_names(exported.directory / "onnx/vision_encoder.onnx") == (["pixel_values"], ["image_features"])
    assert io_names(exported.directory / "onnx/embed_tokens.onnx") == (["input_ids"], ["inputs_embeds"])
    inputs, outputs = io_names(exported.directory / "onnx/decoder_model_merged.onnx")
    cache = [f"{layer}.{kind}" for layer in range(2) for kind in ("key", "value")]
    expected = ["inputs_embeds", "attention_mask", "position_ids", *(f"past_key_values.{name}" for name in cache)]
    if exported.model.config.fusion == "visual_expert":
        expected.append("image_positions")
    assert (inputs, outputs) == (expected, ["logits", *(f"present.{name}" for name in cache)])
    config = AutoConfig.from_pretrained(exported.directory, trust_remote_code=True)
    assert (config.fusion, config.max_tiles) == (exported.model.config.fusion, exported.model.config.max_tiles)
    processor = AutoProcessor.from_pretrained(exported.directory, trust_remote_code=True)
    assert processor.num_image_tokens == exported.processor.num_image_tokens


def test_onnxruntime_generates_pytorch_greedy_tokens(exported):
    # Two sizes: with tiles one image is a single tile and the other two tiles and a thumbnail, so rows differ in
    # length and the shorter one is left-padded.
    images = noise_images(1, 32, 32, seed=1) + noise_images(1, 64, 32, seed=2)
    report = check_parity(exported.model, exported.processor, exported.runtime, images, max_new_tokens=12)
    assert report.tokens_match, (report.torch_tokens, report.onnx_tokens)
    assert len(np.unique(report.torch_tokens)) > 2  # not one token repeated: the cache carries the text
    assert report.max_logit_diff < LOGIT_TOLERANCE


def test_a_prompt_without_images_generates_pytorch_greedy_tokens(exported):
    inputs = exported.processor(text=["Describe the image briefly."], return_tensors="pt")
    with torch.inference_mode():
        generated = exported.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = generated[:, inputs["input_ids"].shape[1] :]
    output = exported.runtime.generate(inputs["input_ids"].numpy(), inputs["attention_mask"].numpy(), max_new_tokens=6)
    np.testing.assert_array_equal(output.sequences, expected.numpy())


@pytest.mark.parametrize("projector_type", ["linear", "perceiver"])
def test_the_vision_encoder_of_the_other_projectors_gives_pytorchs_image_features(projector_type, tmp_path):
    # Their early-fusion models share the MLP's embed_tokens and decoder graphs (the same language model code).
    model, processor = varied_tiny_vlm(projector_type)
    path = tmp_path / "vision_encoder.onnx"
    assert not export.export_vision_encoder(model, processor, path)  # weights inside the file
    pixel_values = processor.image_processor(noise_images(3, 32, 32, seed=3), return_tensors="pt")["pixel_values"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {"pixel_values": pixel_values.numpy()})  # 3 images, exported with 2
    with torch.no_grad():
        expected = model.get_image_features(pixel_values).image_embeds
    assert features.shape == (3, processor.num_image_tokens, model.config.text_config.hidden_size)
    np.testing.assert_allclose(features, expected.numpy(), atol=FEATURE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("fusion", list(REFUSED))
def test_fusions_outside_the_layout_are_refused_before_anything_is_written(fusion, tmp_path):
    model, processor = build_tiny_vlm(REFUSED[fusion][0], **REFUSED[fusion][1])
    with pytest.raises(export.UnsupportedExportError, match=f"fusion='{fusion}' cannot be exported.*decoder"):
        export.export_onnx(model, processor, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_line_refuses_an_unexportable_model_and_bad_paths(tmp_path, capsys):
    model, processor = build_tiny_vlm("perceiver", fusion="cross_attention")
    model.save_pretrained(tmp_path / "xattn")
    taken = tmp_path / "taken"
    (taken / "onnx").mkdir(parents=True)
    (taken / "onnx" / "decoder_model_merged.onnx").write_bytes(b"")
    (tmp_path / "file").write_text("not a directory")
    cases = {
        "fusion='cross_attention' cannot be exported": [str(tmp_path / "xattn"), str(tmp_path / "out")],
        "does not exist": [str(tmp_path / "missing"), str(tmp_path / "out")],
        "already holds an export": ["tiny:mlp", str(taken)],
        "cannot be written to": ["tiny:mlp", str(tmp_path / "file" / "out")],
    }
    for message, (model_name, output_dir) in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            export_onnx.main(["--model", model_name, "--output_dir", output_dir])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_large_graphs_keep_their_weights_in_the_file_transformers_js_reads(tmp_path, monkeypatch):
    model, processor = build_tiny_vlm("mlp")
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    path = tmp_path / "onnx" / "embed_tokens.onnx"
    path.parent.mkdir()
    assert export.export_embed_tokens(model, path)
    assert path.with_name("embed_tokens.onnx_data").stat().st_size > path.stat().st_size
    export.save_configs(model, processor, tmp_path, ["embed_tokens"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["transformers.js_config"] == {"use_external_data_format": {"embed_tokens.onnx": 1}}
    input_ids = torch.tensor([[5, 6, 7]])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (embeds,) = session.run(None, {"input_ids": input_ids.numpy()})
    np.testing.assert_array_equal(embeds, model.get_input_embeddings()(input_ids).detach().numpy())
