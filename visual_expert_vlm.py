# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
CogVLM's visual expert (`fusion="visual_expert"`, deep fusion through custom layers): in the chosen decoder layers,
the image tokens' positions go through a trainable copy of the layer's attention projections (query, key, value,
output) and MLP, initialised from the language model's own, while the text positions keep the language model's
(frozen) originals; both meet in the layer's one causal softmax. The images enter the sequence as with early fusion.
The experts sit beside the language model ([`VLMVisualExperts`]) and forward hooks on its projections and MLPs put the
experts' outputs at the image positions, so the language model's code, weights and state-dict keys are untouched.
"""

import copy
import functools

import torch
from torch import nn
from transformers import PreTrainedModel


try:
    from .cross_attention_vlm import check_fusion_batch, find_decoder_layers
except ImportError:  # imported as a local module rather than as remote code
    from cross_attention_vlm import check_fusion_batch, find_decoder_layers


# Each expert's name and the module of a decoder layer (Llama's, Qwen2's, Mistral's layout) that it copies.
EXPERT_PATHS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "mlp": "mlp",
}


def expert_sources(language_model: PreTrainedModel, layers: list[int]) -> dict[int, dict[str, nn.Module]]:
    """
    The modules of each decoder layer in `layers` that get an expert (see `EXPERT_PATHS`). Raises `ValueError` when
    the language model's decoder layers or those modules cannot be found.
    """
    decoder_layers = find_decoder_layers(language_model, fusion="visual_expert")
    sources = {}
    for layer in layers:
        modules = {}
        for name, path in EXPERT_PATHS.items():
            try:
                modules[name] = decoder_layers[layer].get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"fusion='visual_expert' copies each decoder layer's {', '.join(EXPERT_PATHS.values())}, but layer "
                    f"{layer} of {type(language_model).__name__} has no `{path}`; use another fusion with this model."
                ) from None
        sources[layer] = modules
    return sources


class VLMVisualExperts(nn.Module):
    r"""
    The visual experts of a language model's decoder layers `layers`: `experts[str(layer)][name]` copies the module
    `EXPERT_PATHS[name]` of that layer (its weights included), and a forward hook on the original replaces its output
    at the image positions of the current forward pass (`image_positions`) with the expert's.

    image_positions (`torch.BoolTensor` of shape `(batch_size, sequence_length)`, *optional*):
        Set by the VLM around its language model's forward pass: where the image tokens are. `None` (text only, or a
        decoding step) leaves every output as the language model computes it.
    """

    def __init__(self, language_model: PreTrainedModel, layers: list[int]):
        super().__init__()
        sources = expert_sources(language_model, layers)
        self.experts = nn.ModuleDict(
            {str(layer): nn.ModuleDict({name: _copy(module) for name, module in modules.items()})
             for layer, modules in sources.items()}
        )  # fmt: skip
        self.image_positions: torch.BoolTensor | None = None
        self._hooks = [
            module.register_forward_hook(functools.partial(self._route, str(layer), name))
            for layer, modules in sources.items()
            for name, module in modules.items()
        ]

    def copy_from(self, language_model: PreTrainedModel) -> None:
        """Sets every expert's weights to those of the language model module it copies (the initialisation)."""
        for layer, modules in expert_sources(language_model, [int(layer) for layer in self.experts]).items():
            for name, module in modules.items():
                self.experts[str(layer)][name].load_state_dict(module.state_dict())

    def detach_hooks(self) -> None:
        """Removes the hooks from the language model (before experts are built for another one)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _route(
        self, layer: str, name: str, module: nn.Module, args: tuple, output: torch.Tensor
    ) -> torch.Tensor | None:
        """Forward hook of a language-model module: the expert's output `(batch, sequence, dim)` at image positions."""
        positions = self.image_positions
        if positions is None:
            return None
        hidden_states = args[0]
        check_fusion_batch(positions.shape, hidden_states, int(layer), "visual experts")
        expert = self.experts[layer][name]
        return output.index_put((positions,), expert(hidden_states[positions]))


def _copy(module: nn.Module) -> nn.Module:
    """A copy of `module` with its own parameters (the same values) and none of its hooks."""
    duplicate = copy.deepcopy(module)
    duplicate._forward_hooks.clear()
    duplicate._forward_pre_hooks.clear()
    return duplicate
