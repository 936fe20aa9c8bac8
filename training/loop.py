# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The training loop: [`train`] runs a whole run, one [`training_step`] per micro-batch.

The same loop runs on CPU, one GPU, multi-GPU DDP, FSDP and DeepSpeed ZeRO-2 (see `configs/accelerate/`): mixed
precision, gradient accumulation, clipping, warm-up + cosine, atomic checkpoints that resume mid-epoch, evaluation
with CIDEr/METEOR after every epoch, the best model by CIDEr, a model card and the Hub upload.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor

from .arguments import PAIR_STAGES, VLMTrainingArguments
from .checkpointing import Checkpointer, TrainerState
from .data import DATA_SEED_SPREAD, EvalSet, RunData
from .evaluation import evaluate
from .integrity import FrozenWeights
from .model_card import push_output_dir, write_model_card, write_stage1_model_card
from .model_setup import (
    TrainingSchedule,
    bare_model,
    build_model,
    build_optimization,
    count_parameters,
    model_source,
    prepare_model_for_training,
)
from .output_dir import prepare_output_dir
from .pair_data import RetrievalEvalSet
from .preemption import StopRequests, TrainingInterrupted
from .results import (
    TrainingResults,
    bridge_description,
    bridge_fields,
    collect_results,
    headline_metrics,
    results_summary,
    run_summary,
)
from .retrieval_evaluation import evaluate_retrieval
from .run_data import prepare_run_data
from .run_lock import hold_output_dir
from .saved_models import SHARDED, discard_stale_best, finish_best_model, save_best_model, save_final_model
from .telemetry import StepWindow, training_logs


def training_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor] | None,
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    loss_weight: float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor]]:
    """
    One micro-batch: forward with `labels` (the loss on labelled positions only), backward, and at the end of an
    accumulation cycle gradient clipping; the prepared optimizer and scheduler step only then. `loss_weight` 0 replays
    a batch without learning from it; `batch=None` runs no forward at all.

    Args:
        batch (`dict[str, torch.Tensor]`, *optional*): a [`~training.data.CaptionCollator`] batch: `input_ids`,
            `attention_mask`, `labels` and `position_ids` of shape `(batch_size, sequence_length)`, and `pixel_values`
            `(batch_size, 3, image_size, image_size)` or `vision_features` `(batch_size, num_patches, vision_dim)`;
            or a stage-1 [`~training.pair_data.PairCollator`] batch.

    Returns:
        The detached loss `()` (`None` without a batch), the gradient norm `()` before clipping (`None` mid-cycle),
        and the detached loss `()` of each objective of a multi-objective model (stage 1: `{"itc": ..., ...}`).
    """
    loss = grad_norm = None
    objectives = {}
    with accelerator.accumulate(model):
        if batch is not None:
            outputs = model(**batch)
            loss = outputs.loss * loss_weight
            objectives = {name[5:]: value.detach() for name, value in outputs.items() if name.startswith("loss_")}
            accelerator.backward(loss)
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return (None if loss is None else loss.detach()), grad_norm, objectives


def train(
    args: VLMTrainingArguments,
    model: VLMForConditionalGeneration | None = None,
    processor: VLMProcessor | None = None,
) -> TrainingResults:
    """
    Trains as `args` says and returns the results (also written to `output_dir/training_results.json`). `model` and
    `processor` replace the model source of `args` when given. The run holds `output_dir` from start to end (a second
    run into it is refused), and stops with a checkpoint on SIGTERM or SIGINT ([`TrainingInterrupted`]).
    """
    if (model is None) != (processor is None):
        raise ValueError("Pass `model` and `processor` together, or neither to build them from `args`.")
    wall_start = time.perf_counter()
    accelerator = make_accelerator(args)
    with hold_output_dir(accelerator, args.output_dir):
        try:
            return run_training(args, accelerator, model, processor, wall_start)
        except TrainingInterrupted:
            accelerator.end_training()
            raise


def run_training(
    args: VLMTrainingArguments,
    accelerator: Accelerator,
    model: VLMForConditionalGeneration | None,
    processor: VLMProcessor | None,
    wall_start: float,
) -> TrainingResults:
    """The run of [`train`], in its held output directory."""
    set_seed(args.seed)
    source = model_source(args) if model is None else {"model": f"a {type(model).__name__} passed to train()"}
    vlm, processor = (model, processor) if model is not None else build_model(args)
    model = prepare_model_for_training(vlm, args)
    parameter_counts = count_parameters(model)
    # Checkpoints leave the frozen weights out: the main process, which writes and verifies checkpoints, fingerprints
    # them so that a run resumes only onto the same ones. Every run can checkpoint: a stop signal writes one.
    frozen = FrozenWeights.of(model, source) if accelerator.is_main_process else None
    prepare_output_dir(
        accelerator, args.output_dir, args.overwrite_output_dir, args.resume_from_checkpoint, list(source.values())
    )
    checkpointer = Checkpointer(accelerator, args.output_dir, args.save_steps, args.save_total_limit, frozen)
    checkpoint = checkpointer.find(args.resume_from_checkpoint)

    data = prepare_run_data(args, accelerator, vlm, processor)
    num_examples = len(data.train_examples)
    optimizer, scheduler, schedule = build_optimization(model, args, num_examples, accelerator.num_processes)
    # The training loader goes through the same `prepare` call as the model: DeepSpeed sizes its batches from it.
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, data.train_loader, scheduler)
    data = replace(data, train_loader=train_loader)
    settings = {**args.resume_settings(), "mixed_precision": accelerator.mixed_precision,
                "num_processes": accelerator.num_processes, "num_train_examples": num_examples}  # fmt: skip
    state = checkpointer.load(checkpoint, settings)
    discard_stale_best(accelerator, args.output_dir, state.best_step)

    run_name = args.run_name or os.path.basename(os.path.abspath(args.output_dir))
    accelerator.init_trackers(run_name, config=tracker_config(args))
    samples_per_step = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    accelerator.print(
        run_summary(bridge_description(vlm), args.stage, data, schedule, parameter_counts, samples_per_step)
    )
    with StopRequests() as stop:
        captions = run_epochs(
            args, accelerator, model, processor, optimizer, scheduler, data, schedule, state, checkpointer, stop
        )

    saved_step = finish_best_model(accelerator, model, args.output_dir, frozen, args.load_best_model_at_end)
    save_final_model(accelerator, model, processor, args.output_dir, merge_adapter=args.stage == "lora")
    sample_captions = list(captions.items())[: args.num_sample_captions]
    results = collect_results(
        accelerator, vlm, args.output_dir, args.stage, data, state, parameter_counts, sample_captions,
        wall_time_s=time.perf_counter() - wall_start, saved_step=saved_step,
    )  # fmt: skip
    accelerator.print(results_summary(results))
    if accelerator.is_main_process:
        results.save(args.output_dir)
        card_writer = write_stage1_model_card if args.stage in PAIR_STAGES else write_model_card
        card_writer(args.output_dir, args, results)
        if args.push_to_hub:
            push_output_dir(args.output_dir, args.push_to_hub, args.hub_private_repo)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def tracker_config(args: VLMTrainingArguments) -> dict[str, str | int | float | bool]:
    """The run's settings as trackers take them (TensorBoard's hyper-parameters are scalars or strings)."""
    values = {name: value for name, value in asdict(args).items() if value is not None}
    return {name: json.dumps(value) if isinstance(value, dict) else value for name, value in values.items()}


def make_accelerator(args: VLMTrainingArguments) -> Accelerator:
    """
    The run's accelerator: device, mixed precision, gradient accumulation, trackers logging to `output_dir/logs`, and
    the training data shuffled by accelerate's seedable sampler from `args.seed` and the epoch.
    """
    # The seedable sampler shuffles epoch e with seed `data_seed + e`: spreading the seeds keeps runs of neighbouring
    # seeds from sharing their epoch orders one epoch apart.
    data_seed = args.seed * DATA_SEED_SPREAD
    accelerator = Accelerator(
        cpu=args.use_cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=data_seed, even_batches=True),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.trackers,
        project_config=ProjectConfiguration(args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
    )
    if args.stage == "lora" and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "The lora stage merges adapters into unsharded weights: run it with DDP or DeepSpeed, not FSDP."
        )
    if args.load_best_model_at_end and accelerator.distributed_type in SHARDED:
        raise ValueError(
            "load_best_model_at_end reloads the best trainable parameters into unsharded weights: under FSDP or "
            "DeepSpeed, best/ holds the complete best model instead; leave load_best_model_at_end off."
        )
    return accelerator


def run_epochs(
    args: VLMTrainingArguments,
    accelerator: Accelerator,
    model: nn.Module,
    processor: VLMProcessor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: RunData,
    schedule: TrainingSchedule,
    state: TrainerState,
    checkpointer: Checkpointer,
    stop: StopRequests,
) -> dict[str, str]:
    """
    Trains from `state` to the end of `schedule`: one [`training_step`] per micro-batch, logs every
    `args.logging_steps`, the `checkpointer`'s checkpoints, an evaluation after every epoch (and before the first
    step with `args.eval_before_training`, after the last one when `max_steps` ends mid-epoch). Returns the captions
    of the last evaluation. Raises [`TrainingInterrupted`] after the checkpoint of the step that a `stop` came in.
    """
    unwrapped = bare_model(accelerator, model)
    bar = tqdm(
        total=schedule.total_steps,
        initial=state.global_step,
        desc=f"train {bridge_fields(unwrapped)['projector_type'].replace('none', args.stage)}",
        disable=not accelerator.is_local_main_process,
    )
    objectives = getattr(unwrapped.config, "active_objectives", ())  # several losses to log: Q-Former stage 1
    report = ProgressReport(accelerator, optimizer, StepWindow(accelerator.device, objectives), bar)
    window = report.window
    captions: dict[str, str] = {}
    if args.eval_before_training and args.eval_strategy != "no" and state.global_step == 0:
        evaluate_and_record(accelerator, model, processor, data.eval_set, state, args, epoch=0, save_best=False)
    grad_norm = previous = None
    model.train()
    while state.epoch < schedule.num_epochs and state.global_step < schedule.total_steps:
        for batch in window.timed(epoch_batches(accelerator, data, state)):
            state.step_in_epoch += 1
            window.add_skipped_images(batch.pop("num_skipped_images"))
            batch, weight, previous = replay_if_unreadable(batch, previous)
            with window.computing():
                loss, grad_norm, objectives = training_step(
                    model, batch, accelerator, optimizer, scheduler, args.max_grad_norm, weight
                )
            if weight:
                window.add_batch(loss, batch, objectives)
            if accelerator.sync_gradients:
                end_optimizer_step(report, checkpointer, state, grad_norm, args.logging_steps, schedule.total_steps)
                stop_if_asked(stop, report, checkpointer, state, grad_norm)
                if state.global_step >= schedule.total_steps and state.step_in_epoch < len(data.train_loader):
                    break  # max_steps reached mid-epoch
        if state.step_in_epoch < len(data.train_loader):
            break
        if args.eval_strategy == "epoch":
            captions = evaluate_and_record(accelerator, model, processor, data.eval_set, state, args, state.epoch + 1)
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
    report.record(state, grad_norm)
    bar.close()
    # Stopped mid-epoch by max_steps: the final model still gets its evaluation.
    if args.eval_strategy == "epoch" and (not state.history or state.history[-1]["step"] != state.global_step):
        epoch = state.epoch + state.step_in_epoch / schedule.batches_per_epoch
        captions = evaluate_and_record(accelerator, model, processor, data.eval_set, state, args, epoch)
    return captions


def epoch_batches(accelerator: Accelerator, data: RunData, state: TrainerState) -> DataLoader:
    """The micro-batches of `state.epoch` not trained on yet: the whole epoch, or its rest after a resume."""
    data.train_examples.set_epoch(state.epoch)
    # The prepared loader hands its own epoch counter to the seedable sampler at every pass: set it, not the sampler's.
    data.train_loader.set_epoch(state.epoch)
    if not state.step_in_epoch:
        return data.train_loader
    # The loader that skips the batches already trained on has an epoch counter of its own (0 in older accelerate).
    loader = accelerator.skip_first_batches(data.train_loader, state.step_in_epoch)
    loader.set_epoch(state.epoch)
    return loader


def replay_if_unreadable(
    batch: dict[str, torch.Tensor], previous: dict[str, torch.Tensor] | None
) -> tuple[dict[str, torch.Tensor] | None, float, dict[str, torch.Tensor] | None]:
    """
    `(batch to train on, loss weight, batch to replay next time)`. When every image of `batch` was unreadable, the
    previous batch is replayed with weight 0, so that every process still runs the same forward and backward passes.
    Before the first readable batch there is nothing to replay (`None`): no forward runs, which one process survives
    but several would not (the others' backward waits for this one).
    """
    if "input_ids" in batch:
        return batch, 1.0, batch
    return previous, 0.0, previous


@dataclass
class ProgressReport:
    """How a run reports training: the steps since the last log, the progress bar, and the trackers."""

    accelerator: Accelerator
    optimizer: torch.optim.Optimizer
    window: StepWindow
    bar: tqdm

    def record(self, state: TrainerState, grad_norm: torch.Tensor | None) -> None:
        """Adds the steps since the last log to `state` (samples, skipped images, time), logs them, empties `window`."""
        totals = self.window.flush(self.accelerator)
        state.samples_seen += totals.samples
        state.skipped_train_images += totals.skipped_images
        state.train_time_s += totals.time_s
        if totals.micro_batches:
            device = self.accelerator.device
            logs = training_logs(totals, state.epoch, state.skipped_train_images, self.optimizer, grad_norm, device)
            self.accelerator.log(logs, step=state.global_step)
            self.bar.set_postfix(loss=f"{logs['train/loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")


def end_optimizer_step(
    report: ProgressReport,
    checkpointer: Checkpointer,
    state: TrainerState,
    grad_norm: torch.Tensor | None,
    logging_steps: int,
    total_steps: int,
) -> None:
    """Counts the optimizer step, then logs every `logging_steps` (and at `total_steps`) and checkpoints when due."""
    state.global_step += 1
    report.bar.update(1)
    if state.global_step % logging_steps == 0 or state.global_step == total_steps:
        report.record(state, grad_norm)
    if checkpointer.due(state.global_step):
        report.record(state, grad_norm)
        checkpointer.save(state)


def stop_if_asked(
    stop: StopRequests, report: ProgressReport, checkpointer: Checkpointer, state: TrainerState, grad_norm: torch.Tensor
) -> None:
    """After an optimizer step: when a stop signal came in (on any process), checkpoints and raises."""
    if stop.should_stop(report.accelerator):
        report.record(state, grad_norm)
        checkpoint = checkpointer.saved(state.global_step) or checkpointer.save(state)
        raise TrainingInterrupted(stop.received or "a stop signal to another process", checkpoint, state.global_step)


def evaluate_and_record(
    accelerator: Accelerator,
    model: nn.Module,
    processor: VLMProcessor,
    eval_set: EvalSet | RetrievalEvalSet,
    state: TrainerState,
    args: VLMTrainingArguments,
    epoch: float,
    save_best: bool = True,
) -> dict[str, str]:
    """
    Evaluates the model, appends the record to `state.history`, logs and prints it, and with `save_best` keeps the
    model in `output_dir/best` when it improves on `args.metric_for_best_model`. Returns the captions (main process).
    """
    if isinstance(eval_set, RetrievalEvalSet):
        captions = {}
        batch_size = args.per_device_eval_batch_size
        metrics = evaluate_retrieval(accelerator, model, eval_set, args.retrieval_rerank_k, batch_size)
    else:
        metrics, captions = evaluate(
            accelerator, model, processor, eval_set, args.predict_with_generate, args.max_new_tokens, args.prompt
        )
    record = {"epoch": epoch, "step": state.global_step, **metrics}
    state.history.append(record)
    accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.global_step)
    accelerator.print(f"eval after epoch {epoch}: {headline_metrics(metrics)}")
    if save_best:
        save_best_model(accelerator, model, processor, state, record, args.metric_for_best_model, args.output_dir)
    return captions
