# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Training of [`VLMForConditionalGeneration`] on image-caption data with 🤗 Accelerate, one job per module:

- `arguments`: [`VLMTrainingArguments`], every setting of a run, and the YAML config files that fill it;
- `argument_rules`: the type and range of every number a run is given;
- `model_setup`: the model source (a Q-Former stage-1 model, or a VLM whose Q-Former starts from one), the freeze
  stage (`align`, `finetune`, `lora`), AdamW and the schedule;
- `data`: caption examples, the collator, the training loader and the evaluation set;
- `pair_data`: the image-text pairs of Q-Former stage 1 and stage contrastive, and their retrieval evaluation set;
- `feature_cache`: the on-disk cache of a frozen vision tower's features;
- `text_feature_cache`: the same for stage contrastive's locked text encoder;
- `integrity`: checksum manifests and the frozen weights' reference, what makes a checkpoint safe to resume;
- `checkpointing`: lean atomic checkpoints, rotation, verified resume of the same run;
- `output_dir`, `run_lock`: the output directory checked before a run writes to it, and held by one run at a time;
- `preemption`: SIGTERM and SIGINT stop a run after a checkpoint;
- `saved_models`: the final model and `best/`;
- `telemetry`: what is logged while training;
- `evaluation`: validation loss and COCO caption metrics during training;
- `retrieval_evaluation`: Q-Former stage 1's validation losses and retrieval Recall@K;
- `model_card`: the model card of a run and the Hub upload;
- `results`: [`TrainingResults`], what a finished run reports;
- `loop`: [`train`] and [`training_step`];
- `comparison`: [`run_comparison`] and the table of the projector (and fusion) comparison.
"""

from .arguments import MODEL_SOURCE_FIELDS, VLMTrainingArguments, load_yaml_config
from .comparison import (
    ALL_RUNS,
    COMPARE_ALL,
    NAMED_RUNS,
    RUN_NAMES,
    STAGE1_RUN,
    named_runs,
    projector_comparison_table,
    run_comparison,
    run_settings,
)
from .loop import train, training_step
from .preemption import INTERRUPTED_EXIT_STATUS, TrainingInterrupted
from .results import TrainingResults


__all__ = [
    "ALL_RUNS",
    "COMPARE_ALL",
    "NAMED_RUNS",
    "INTERRUPTED_EXIT_STATUS",
    "MODEL_SOURCE_FIELDS",
    "RUN_NAMES",
    "STAGE1_RUN",
    "TrainingInterrupted",
    "TrainingResults",
    "VLMTrainingArguments",
    "load_yaml_config",
    "named_runs",
    "projector_comparison_table",
    "run_comparison",
    "run_settings",
    "train",
    "training_step",
]
