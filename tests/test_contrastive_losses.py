"""
Contrastive pre-training's losses (seed 001's first stage): CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid
loss equal hand-computed values and transformers' own formulas, clamp CLIP's temperature, refuse a batch without
negatives, and over two processes give the loss of the global batch.
"""

import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers.models.clip.modeling_clip import contrastive_loss

from contrastive_pretraining.losses import (
    CLIP_LOGIT_SCALE_INIT,
    CLIP_LOGIT_SCALE_MAX,
    SIGLIP_LOGIT_BIAS_INIT,
    SIGLIP_LOGIT_SCALE_INIT,
    clip_loss,
    sigmoid_loss,
)
from tiny_runs import launch_two_processes


IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXTS = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0) and (0.7071, 0.7071)


def test_clip_loss_equals_the_hand_computed_value():
    r = math.sqrt(0.5)
    # Temperature 2: image->text logits [[2, 2r], [0, 2r]]; text->image [[2, 0], [2r, 2r]]; targets on the diagonal.
    image_to_text = (-math.log(math.exp(2) / (math.exp(2) + math.exp(2 * r)))
                     - math.log(math.exp(2 * r) / (1 + math.exp(2 * r)))) / 2  # fmt: skip
    text_to_image = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(0.5)) / 2
    loss = clip_loss(IMAGES, TEXTS, torch.tensor(math.log(2.0)))
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-6)


def test_clip_loss_is_transformers_clip_loss():
    images, texts = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), torch.randn(6, 8)
    scale = torch.tensor(CLIP_LOGIT_SCALE_INIT)
    logits_per_text = F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T * scale.exp()
    expected = (contrastive_loss(logits_per_text) + contrastive_loss(logits_per_text.t())) / 2  # CLIPModel's loss
    torch.testing.assert_close(clip_loss(images, texts, scale), expected)


def test_clip_temperature_is_learned_below_its_clamp_and_held_at_it():
    images, texts = torch.randn(4, 8), torch.randn(4, 8)
    learned = torch.tensor(CLIP_LOGIT_SCALE_INIT, requires_grad=True)
    clip_loss(images, texts, learned).backward()
    assert learned.grad.abs() > 0
    beyond = torch.tensor(CLIP_LOGIT_SCALE_MAX + 1.0, requires_grad=True)
    loss = clip_loss(images, texts, beyond)
    loss.backward()
    assert beyond.grad == 0  # clamped at 100: no gradient pushes it further
    torch.testing.assert_close(loss, clip_loss(images, texts, torch.tensor(CLIP_LOGIT_SCALE_MAX)))


def test_sigmoid_loss_equals_the_hand_computed_value_and_siglips_formula():
    r = math.sqrt(0.5)
    # t = 2, b = -1: logits [[2 - 1, 2r - 1], [0 - 1, 2r - 1]]; +1 on the diagonal, -1 elsewhere; summed, over 2 images.
    logits = [[1.0, 2 * r - 1], [-1.0, 2 * r - 1]]
    pairs = [-math.log(1 / (1 + math.exp(-(1 if i == j else -1) * logits[i][j]))) for i in range(2) for j in range(2)]
    loss = sigmoid_loss(IMAGES, TEXTS, torch.tensor(math.log(2.0)), torch.tensor(-1.0))
    assert loss.item() == pytest.approx(sum(pairs) / 2, rel=1e-6)

    images, texts = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), torch.randn(5, 8)
    scale, bias = torch.tensor(SIGLIP_LOGIT_SCALE_INIT), torch.tensor(SIGLIP_LOGIT_BIAS_INIT)
    logits_per_text = F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T * scale.exp() + bias  # SiglipModel's
    expected = -F.logsigmoid((2 * torch.eye(5) - 1) * logits_per_text).sum(dim=-1).mean()
    torch.testing.assert_close(sigmoid_loss(images, texts, scale, bias), expected)


@pytest.mark.parametrize("loss", ["clip", "sigmoid"])
def test_a_batch_without_negatives_or_with_unpaired_rows_is_refused(loss):
    compute = {
        "clip": lambda i, t: clip_loss(i, t, torch.tensor(0.0)),
        "sigmoid": lambda i, t: sigmoid_loss(i, t, torch.tensor(0.0), torch.tensor(0.0)),
    }[loss]
    with pytest.raises(ValueError, match="A contrastive batch of one pair has no negatives"):
        compute(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        compute(torch.randn(3, 4), torch.randn(2, 4))


RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from contrastive_pretraining.losses import clip_loss, sigmoid_loss
    state = PartialState(cpu=True)
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    local = slice(3 * state.process_index, 3 * state.process_index + 3)  # each process holds half the pairs
    losses = [clip_loss(images[local], texts[local], torch.tensor(2.0)).item(),
              sigmoid_loss(images[local], texts[local], torch.tensor(1.5), torch.tensor(-2.0)).item()]
    gathered = gather_object([losses])
    if state.is_main_process:
        print("LOSSES" + json.dumps(gathered))
    state.wait_for_everyone()
    torch.distributed.destroy_process_group()  # a process leaving gloo's group unclosed may abort at exit
    """
)


def test_over_two_processes_the_negatives_are_the_global_batchs(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    completed = launch_two_processes([str(script)])
    assert completed.returncode == 0, completed.stderr[-3000:]
    per_process = json.loads(completed.stdout.split("LOSSES", 1)[1].splitlines()[0])
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    # Equal halves: the processes' mean is the loss of the six pairs on one process.
    expected = [clip_loss(images, texts, torch.tensor(2.0)).item(),
                sigmoid_loss(images, texts, torch.tensor(1.5), torch.tensor(-2.0)).item()]  # fmt: skip
    for index in range(2):
        assert sum(losses[index] for losses in per_process) / 2 == pytest.approx(expected[index], rel=1e-5)
    alone = [clip_loss(images[:3], texts[:3], torch.tensor(2.0)).item()]
    assert per_process[0][0] != pytest.approx(alone[0], rel=1e-3)  # the other process's pairs were negatives
