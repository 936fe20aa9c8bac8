# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Instruction tuning against the peer a user would pick: TRL's `SFTTrainer` training transformers'
`LlavaForConditionalGeneration`, side by side with our `training_step` on our `mlp` model, in one process, with the
same weights (`llava_peer.build_pair`) and the same batch of three-turn, three-image conversations (`ChatCollator`).

The stage is LLaVA-1.5's second: the projector and the language model trained, the vision tower frozen, pixels in.
TRL cannot mask the assistant turns of a vision-language model's conversations (`assistant_only_loss` is refused for
them), so its `data_collator` hands it our batch, whose labels are on the answers only: both models are trained on the
same tokens. Settings made equal: learning rate, constant schedule, no weight decay, gradient clipping at 1.0, float32
(on a GPU both train in bfloat16 autocast), no gradient checkpointing (TRL's default turns it on). Left at TRL's
defaults, as a user gets them: its optimizer (`adamw_torch_fused`; ours is `torch.optim.AdamW`), its fused LM head
(the logits of labelled positions only, as our loss does) and its per-step entropy and token-accuracy metrics.

Equality first (the loss of the batch in each framework), then the steps interleaved: a `TrainerCallback` times each of
`SFTTrainer`'s optimizer steps (from `on_step_begin` to `on_step_end`: forward, backward, clipping, optimizer and
scheduler) and runs and times one of ours after it. Reported: each one's median seconds, and the median of the
per-step ratios TRL / ours with their min-max, the first step of each left out.

    PYTHONPATH=. python benchmarks/sft_peer.py                   # CPU: real widths, 4 + 4 layers, 4 conversations
    PYTHONPATH=. python benchmarks/sft_peer.py --text_layers 0 --vision_layers 0 --rows 16   # GPU: full depth
    PYTHONPATH=. python benchmarks/sft_peer.py --small           # seconds, a smoke test
"""

import argparse
import importlib.metadata
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import LlavaForConditionalGeneration, TrainerCallback

from benchmarks.llava_peer import build_pair
from benchmarks.measure import autocast, environment, publish_report, software_line, synchronize
from data.shapes_vqa import make_shapes_conversations
from evaluation.markdown_tables import markdown_table
from evaluation.vqa_metrics import VQA_SHORT_ANSWER_PROMPT
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor
from training import training_step
from training.conversation_data import ChatCollator
from training.model_setup import build_optimizer, configure_trainable_parameters


LEARNING_RATE = 2e-5


def conversation_batch(processor: VLMProcessor, rows: int) -> dict[str, torch.Tensor]:
    """`rows` shapes conversations of three turns, one image each, batched by `ChatCollator` (labels on the answers)."""
    conversations = make_shapes_conversations(rows * 3, VQA_SHORT_ANSWER_PROMPT, seed=0, image_size=224)
    batch = ChatCollator(processor)([conversations[i] for i in range(rows)])
    batch.pop("num_skipped_images")
    return batch


def freeze_vision_tower(llava: LlavaForConditionalGeneration) -> LlavaForConditionalGeneration:
    """Llava set up for LLaVA-1.5's stage 2, as `configure_trainable_parameters(..., "finetune")` sets ours."""
    llava.requires_grad_(True)
    llava.model.vision_tower.requires_grad_(False)
    return llava


def our_step(model: VLMForConditionalGeneration, batch: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    """One `finetune` training step of our model on `batch`, as `train()` runs it."""
    device = next(model.parameters()).device
    accelerator = Accelerator(cpu=device.type == "cpu")
    model = configure_trainable_parameters(model, "finetune").train()
    optimizer = build_optimizer(model, LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def step() -> torch.Tensor:
        with autocast(device):
            return training_step(prepared, batch, accelerator, optimizer, scheduler, max_grad_norm=1.0)

    return step


class InterleavedSteps(TrainerCallback):
    """Times each of the trainer's optimizer steps, then runs and times one of `ours` after it."""

    def __init__(self, ours: Callable[[], Any], device: torch.device):
        self.ours, self.device = ours, device
        self.seconds: dict[str, list[float]] = {"ours": [], "trl": []}
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.seconds["trl"].append(time.perf_counter() - self.start)
        start = time.perf_counter()
        self.ours()
        synchronize(self.device)
        self.seconds["ours"].append(time.perf_counter() - start)


def sft_trainer(
    llava: LlavaForConditionalGeneration,
    processor: VLMProcessor,
    batch: dict[str, torch.Tensor],
    steps: int,
    output_dir: str,
    callback: TrainerCallback,
):
    """`SFTTrainer` on `llava` for `steps` optimizer steps, each on `batch` (see the module docstring's settings)."""
    from trl import SFTConfig, SFTTrainer

    on_gpu = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        logging_steps=steps + 1,
        save_strategy="no",
        report_to="none",
    )
    return SFTTrainer(
        model=freeze_vision_tower(llava).train(),
        args=args,
        train_dataset=Dataset.from_dict({"step": list(range(steps))}),
        data_collator=lambda _: dict(batch),
        processing_class=processor,
        callbacks=[callback],
    )


def compare(small: bool, text_layers: int, vision_layers: int, rows: int, rounds: int) -> dict[str, Any]:
    """Equality, then the interleaved step timings (see the module docstring)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ours, llava, processor = build_pair(small, text_layers, vision_layers)
    ours.to(device), llava.to(device)
    batch = {name: value.to(device) for name, value in conversation_batch(processor, rows).items()}
    timings = InterleavedSteps(our_step(ours, batch), device)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = sft_trainer(llava, processor, batch, rounds + 1, output_dir, timings)
        with torch.no_grad(), autocast(device):
            losses = {"ours": ours(**batch).loss.item(), "trl": trainer.compute_loss(trainer.model, dict(batch)).item()}
        trainer.train()
    ratios = [trl / ours for ours, trl in zip(timings.seconds["ours"][1:], timings.seconds["trl"][1:])]
    return {
        "settings": {"small": small, "text_layers": text_layers, "vision_layers": vision_layers, "rows": rows,
                     "padded_length": batch["input_ids"].shape[1], "tokens": int(batch["attention_mask"].sum()),
                     "labelled_tokens": int((batch["labels"] != -100).sum()), "images": batch["pixel_values"].shape[0],
                     "rounds": rounds, "vocab_size": ours.config.text_config.vocab_size},
        "loss": losses,
        "ours_s": statistics.median(timings.seconds["ours"][1:]),
        "trl_s": statistics.median(timings.seconds["trl"][1:]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "environment": {**environment(device), "trl": importlib.metadata.version("trl")},
    }  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    env, settings = report["environment"], report["settings"]
    header = (
        f"{software_line(env)}, trl {env['trl']}, {env['date']}; {settings['rows']} conversations, "
        f"{settings['images']} images, padded to "
        f"{settings['padded_length']} tokens ({settings['tokens']} real, {settings['labelled_tokens']} labelled), "
        f"vocabulary {settings['vocab_size']:,}, {settings['rounds']} interleaved steps; loss ours "
        f"{report['loss']['ours']:.6f} / TRL {report['loss']['trl']:.6f}"
    )
    row = ("finetune training step (LLaVA-1.5 stage 2)", f"{report['ours_s']:.3f}", f"{report['trl_s']:.3f}",
           f"{report['ratio_median']:.2f}x", f"{report['ratio_min']:.2f}-{report['ratio_max']:.2f}x")  # fmt: skip
    table = markdown_table(("workload", "ours s", "TRL SFTTrainer s", "TRL / ours (median)", "min-max"), [row])
    return f"{header}\n\n{table}\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the demo's tiny models: a smoke test, not a timing")
    parser.add_argument("--text_layers", type=int, default=4, help="language-model layers (0: all 24)")
    parser.add_argument("--vision_layers", type=int, default=4, help="vision-tower layers (0: all 12)")
    parser.add_argument("--rows", type=int, default=4, help="conversations in the batch")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved steps timed (after one untimed of each)")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args(argv)
    report = compare(args.small, args.text_layers, args.vision_layers, args.rows, args.rounds)
    publish_report(format_report(report), report, args.output)
    return report


if __name__ == "__main__":
    main()
