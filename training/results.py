# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""[`TrainingResults`]: what a finished run reports, saved as `training_results.json` in its output directory."""

import json
import os
from dataclasses import asdict, dataclass


RESULTS_NAME = "training_results.json"


@dataclass
class TrainingResults:
    """
    The outcome of [`~training.loop.train`]: what was trained, the final and best metrics, the evaluation history
    (one record per evaluation: `epoch`, `step`, `loss` and the caption metrics), counts, times and throughput.
    """

    output_dir: str
    projector_type: str
    stage: str
    num_image_tokens: int
    trainable_parameters: int
    total_parameters: int
    num_train_images: int
    num_eval_images: int
    skipped_train_images: int
    skipped_eval_images: int
    feature_cache: dict[str, str | None]  # per split: "hit", "computed", or None when the features are not cached
    global_step: int
    final_metrics: dict[str, float]
    best_metric: float | None
    best_step: int | None
    history: list[dict]
    train_time_s: float
    wall_time_s: float
    samples_per_second: float
    hardware: str
    num_processes: int
    mixed_precision: str
    sample_captions: list[tuple[str, str, str]]  # (image id, a reference, generated caption)

    def save(self, output_dir: str) -> str:
        """Writes `training_results.json` into `output_dir`; returns its path."""
        path = os.path.join(output_dir, RESULTS_NAME)
        with open(path, "w", encoding="utf-8") as file:
            json.dump(asdict(self), file, indent=2)
        return path
