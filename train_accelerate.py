# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Train a VLM (vision tower + projector + language model) on image captions with 🤗 Accelerate, or compare projectors.

Settings come from a YAML file whose keys are the fields of `training.VLMTrainingArguments`; command-line flags
override them:

    accelerate launch train_accelerate.py --config configs/coco_mlp.yaml
    accelerate launch train_accelerate.py --config configs/coco_qformer.yaml --push_to_hub user/vlm-qformer
    accelerate launch --config_file configs/accelerate/fsdp.yaml train_accelerate.py --config configs/coco_mlp.yaml
    accelerate launch train_accelerate.py --config configs/tiny_shapes.yaml        # offline, CPU, minutes
    accelerate launch train_accelerate.py --config configs/coco_mlp.yaml --resume_from_checkpoint latest

`--compare` trains several runs one after the other and prints a table of them, with the untrained model of the
first run as baseline. Its value is a comma-separated list of items, each one of:

- a run name: a projector type (`linear`, `mlp`, `qformer`, `perceiver`) for the `--config` run with that
  projector and early fusion, `<projector>_xattn` (e.g. `perceiver_xattn`) for it with gated cross-attention
  fusion, `<projector>_expert` (e.g. `mlp_expert`) for it with CogVLM's visual experts, or `qformer_stage1` for
  BLIP-2's Q-Former stage 1 (into `<output_dir>/qformer_stage1/stage1`, same data, seed, batch size, learning rate
  and epochs) then the `qformer` run starting from it, or `<projector>_contrastive` (e.g. `mlp_contrastive`) for the
  vision tower first trained contrastively (seed 001's first stage, into `<output_dir>/<name>/stage1`) then the
  `<projector>` run on it, or `<projector>_tiles` / `<projector>_hybrid` (e.g. `mlp_hybrid`) for it with up to 4
  tiles and a thumbnail per image, every tile in the sequence or (NVLM's hybrid) the thumbnail in the sequence and
  the tiles through gated cross-attention, in `<output_dir>/<name>`; `all` is the four projectors, `perceiver_xattn`
  and `qformer_stage1`;
- a YAML file: that run;
- a family prefix such as `configs/coco`: the files `configs/coco_<name>.yaml` that exist.

    python train_accelerate.py --config configs/tiny_shapes.yaml --compare all     # offline, < 10 min on 2 CPU cores
    accelerate launch train_accelerate.py --compare configs/coco --image_root /data/coco

Command-line flags apply to every run of a comparison; with `--output_dir`, each run writes to `<output_dir>/<name>`.
The table is printed and written to `comparison.md` in the runs' common parent directory.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from accelerate import PartialState
from transformers import HfArgumentParser

from training import (
    COMPARE_ALL,
    INTERRUPTED_EXIT_STATUS,
    MODEL_SOURCE_FIELDS,
    NAMED_RUNS,
    RUN_NAMES,
    TrainingInterrupted,
    TrainingResults,
    VLMTrainingArguments,
    load_yaml_config,
    named_runs,
    projector_comparison_table,
    run_comparison,
    train,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """This module's docstring as written, then every option with its default."""


def build_parser() -> HfArgumentParser:
    """Every option: `--config`, `--compare` and the fields of [`VLMTrainingArguments`]."""
    parser = HfArgumentParser(VLMTrainingArguments, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", help="YAML file whose keys are the options below; flags override its values.")
    parser.add_argument(
        "--compare",
        help="Train several runs one after the other and print their table: a comma-separated list of 'all', "
        "run names, YAML files or family prefixes (see above).",
    )
    return parser


def parse_args(argv: Sequence[str], config: str | os.PathLike | None = None) -> VLMTrainingArguments:
    """`argv` flags over the values of the YAML file `config` over the defaults of [`VLMTrainingArguments`]."""
    parser = build_parser()
    if config is not None:
        parser.set_defaults(**yaml_defaults(config, argv))
    return parser.parse_args_into_dataclasses(list(argv))[0]  # the rest is --config and --compare


def yaml_defaults(config: str | os.PathLike, argv: Sequence[str]) -> dict:
    """
    The settings of the YAML file `config`, as defaults under the flags `argv`. A model source among the flags replaces
    the file's (`--model_name_or_path DIR` over its `model: tiny`); two in the file alone are refused naming it.
    """
    values = load_yaml_config(config)
    flags = {arg.split("=", 1)[0].removeprefix("--") for arg in argv if arg.startswith("--")}
    in_file = [name for name in MODEL_SOURCE_FIELDS if values.get(name) is not None]
    if flags & set(MODEL_SOURCE_FIELDS):
        return {name: value for name, value in values.items() if name not in MODEL_SOURCE_FIELDS}
    if len(in_file) > 1 and set(in_file) != {"vision_model", "text_model"}:
        raise ValueError(
            f"{config} sets several model sources ({', '.join(in_file)}): keep one there, or choose one with a flag "
            "(--model, --vision_model + --text_model, --model_name_or_path), which replaces the file's."
        )
    return values


def comparison_runs(spec: str, argv: Sequence[str], config: str | None) -> list[VLMTrainingArguments]:
    """The runs of `--compare spec` (see the module docstring), with the flags `argv` applied to each."""
    runs = []
    output_dir_flag = any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in argv)
    for item in spec.split(","):
        item = item.strip()
        if item == "all" or item in NAMED_RUNS:
            base = parse_args(argv, config)
            for name in COMPARE_ALL if item == "all" else (item,):
                runs += named_runs(base, name)
            continue
        paths = [Path(item)] if item.endswith((".yaml", ".yml")) else [Path(f"{item}_{n}.yaml") for n in RUN_NAMES]
        paths = [path for path in paths if path.is_file()]
        if not paths:
            raise ValueError(
                f"--compare item {item!r} is neither 'all', a run name ({', '.join(NAMED_RUNS)}), a YAML file, nor a "
                f"prefix of {item}_<name>.yaml files."
            )
        for path in paths:
            run = parse_args(argv, path)
            if output_dir_flag:
                run = replace(run, output_dir=os.path.join(run.output_dir, path.stem))
            runs.append(run)
    return runs


def main(argv: Sequence[str] | None = None) -> list[TrainingResults]:
    """Runs the command line; returns the results of every run (see `training.train`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    options, _ = build_parser().parse_known_args(argv)  # `--help` prints every option and exits here
    if options.compare is None:
        return [train(parse_args(argv, options.config))]
    runs = comparison_runs(options.compare, argv, options.config)
    results = run_comparison(runs)
    table = projector_comparison_table(results)
    parent = os.path.commonpath([os.path.abspath(run.output_dir) for run in runs])
    if PartialState().is_main_process:
        with open(os.path.join(parent, "comparison.md"), "w", encoding="utf-8") as file:
            file.write(table)
        print(f"\n{table}\nwritten to {os.path.join(parent, 'comparison.md')}")
    return results


if __name__ == "__main__":
    try:
        main()
    except TrainingInterrupted as interrupted:
        print(interrupted, file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_STATUS)
