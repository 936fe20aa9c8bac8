"""The `--small` benchmark runs end to end in-process and reports every section for every projector."""

import math

import pytest
import torch

from benchmarks import contrastive_step, instruct, levers, sft_peer, tiles
from benchmarks.llava_peer import build_pair, labelled_batch, prompt_batch
from benchmarks.run_benchmarks import format_report, run_benchmarks
from benchmarks.sections import fusion_comparison
from benchmarks.stage1_step import VARIANTS, benchmark_stage1
from training import ALL_RUNS


def _rates(report: dict) -> list[float]:
    return [
        *(row[key] for row in report["training"] for key in ("samples_per_s", "tflops_per_s", "peak_memory_mb")),
        *(row["images_per_s"] for row in report["vision"]["extraction"]),
        *(row["captions_per_s"] for row in report["generation"]),
        report["seed_experiment"]["wall_s"],
        *(row["samples_per_s"] for row in report["seed_experiment"]["runs"]),
        *(row["extrapolated_epoch_s"] for row in report["karpathy_epoch"]),
        *(row[key] for row in report["loss_lever"] for key in ("step_s", "peak_memory_mb")),
    ]


def _tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The markdown tables of a report by title: `(header, rows)`, each a list of cells."""
    tables = {}
    for section in text.split("\n\n"):
        title, _, table = section.partition(":\n")
        lines = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("|")]
        if lines:
            tables[title] = (lines[0], lines[2:])
    return tables


@pytest.fixture(scope="module")
def report() -> dict:
    return run_benchmarks(small=True, batch_sizes=[2])


def test_small_benchmark_reports_every_section_and_projector(report):
    assert set(report) == {
        "settings", "training", "vision", "generation", "fusion", "seed_experiment", "karpathy_epoch", "loss_lever",
        "checkpoints", "environment",
    }  # fmt: skip
    sections = (report["training"], report["generation"], report["karpathy_epoch"], report["vision"]["epoch_share"])
    for section in sections:
        assert [row["projector"] for row in section] == list(ALL_RUNS)
    assert report["seed_experiment"]["measured"]
    assert [run["projector"] for run in report["seed_experiment"]["runs"]] == ["mlp", "qformer", "perceiver"]
    assert [row["variant"] for row in report["loss_lever"]] == ["labelled positions only", "full-vocabulary logits"]

    rates = _rates(report)
    assert all(math.isfinite(rate) and rate > 0 for rate in rates), rates
    assert all(0 < row["first_epoch_share"] < 1 for row in report["vision"]["epoch_share"])
    assert all(row["flops_per_step"] > 0 for row in report["training"])
    # Both loss variants compute the same loss: the lever changes the cost only.
    labelled, full = (row["loss"] for row in report["loss_lever"])
    assert math.isclose(labelled, full, rel_tol=1e-4)
    # The lean checkpoint leaves the frozen towers out: its weights are the projector's alone.
    whole, lean = report["checkpoints"]
    assert lean["weights_mb"] * 10 < whole["weights_mb"] and lean["total_mb"] < whole["total_mb"]


def test_report_tables_have_their_columns_and_every_projector(report):
    text = format_report(report)
    tables = _tables(text)
    expected_columns = {
        "Training step (align)": [
            "projector", "batch", "seq len", "trainable params", "samples/s", "step s", "GFLOP/step", "TFLOP/s",
            "peak MB",
        ],
        "Vision share with the feature cache on (derived from the measured rates)": [
            "projector", "batch", "share of epoch 1", "share of a 10-epoch run",
        ],
        "Generation": ["projector", "batch", "captions", "max new tokens", "captions/s"],
        "COCO-Karpathy epoch (566,747 pairs), extrapolated from the measured step rate": [
            "projector", "batch", "samples/s (measured)", "epoch (extrapolated)",
        ],
    }  # fmt: skip
    for title, columns in expected_columns.items():
        header, rows = tables[title]
        assert header == columns, title
        assert [row[0] for row in rows] == list(ALL_RUNS), title
        assert all(len(row) == len(columns) for row in rows), title
    training_header, training_rows = tables["Training step (align)"]
    for row, measured in zip(training_rows, report["training"]):
        assert row[training_header.index("samples/s")] == f"{measured['samples_per_s']:.2f}"
    assert tables["Vision features"][0] == ["batch", "images/s"]
    lever_header, lever_rows = tables["Loss on labelled positions only vs full-vocabulary logits (forward + backward)"]
    assert lever_header[0] == "variant"
    assert [row[0] for row in lever_rows] == [row["variant"] for row in report["loss_lever"]]
    seed = report["seed_experiment"]
    assert f"Seed 000 experiment: {seed['wall_s']:.1f} s wall for mlp, qformer, perceiver x 1 epochs" in text
    header, rows = tables["Early fusion against the others at the same visual budget (align; largest batch)"]
    assert header == [
        "run", "fusion", "batch", "LLM seq len", "trainable params", "samples/s", "peak MB", "captions/s",
    ]  # fmt: skip
    assert [row[:2] for row in rows] == [["perceiver", "early"], ["perceiver_xattn", "cross_attention"]]
    early, deep = report["fusion"]
    # 8 latents in the sequence against one marker token: the deep-fusion sequence is 7 tokens shorter.
    assert early["sequence_length"] - deep["sequence_length"] == 8 - 1
    assert deep["trainable_parameters"] > early["trainable_parameters"]  # the gated blocks train too
    assert [row[-1] for row in rows] == [f"{r['captions_per_s']:.2f}" for r in report["fusion"]]
    header, rows = tables["Checkpoint of an align run (mlp, after one step)"]
    assert header == ["checkpoint", "total MB", "weights MB", "save s"]
    assert [row[0] for row in rows] == ["whole accelerate state", "lean (train())"]


def test_the_stage1_step_benchmark_times_every_objective_alone_and_together():
    rows = benchmark_stage1(small=True, batch_size=4, text_length=8, timed_steps=1)
    assert [row["objectives"] for row in rows] == list(VARIANTS)
    assert all(row["step_s"] > 0 and math.isfinite(row["samples_per_s"]) for row in rows)
    assert len({row["trainable_parameters"] for row in rows}) == 1  # the same model, only the loss differs


def test_our_mlp_model_equals_transformers_llava_holding_the_same_weights():
    ours, llava, processor = build_pair(small=True)
    batch, prompts = labelled_batch(processor, 3), prompt_batch(processor, 2)
    greedy = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).loss, llava(**batch).loss, atol=1e-5, rtol=0)
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        torch.testing.assert_close(ours(**inputs).logits, llava(**inputs).logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(ours.generate(**prompts, **greedy), llava.generate(**prompts, **greedy))


def test_the_levers_benchmark_compares_each_lever_with_its_baseline():
    report = levers.run_levers(small=True, batch_sizes=[4], chunk_size=8)
    chunked, one_piece = report["chunked_loss"]
    assert (chunked["loss_chunk_size"], one_piece["loss_chunk_size"]) == (8, None)
    assert chunked["labelled_positions"] > 8, "several chunks"
    assert chunked["loss"] == pytest.approx(one_piece["loss"], rel=1e-6)
    grouping = report["group_by_length"]
    assert [(r["projector"], r["group_by_length"]) for r in grouping] == [
        ("mlp", False), ("mlp", True), ("qformer", False), ("qformer", True)
    ]
    assert all(0 < r["padding_share"] < 1 and r["train_s"] > 0 for r in grouping)
    assert [r["num_workers"] for r in report["workers"]] == [0, 2]
    assert all(r["same_captions_as_batch_1"] for r in report["batched_generation"])
    tables = _tables(levers.format_report(report))
    assert len(tables["Length-grouped batches (one epoch, tiny models)"][1]) == 4


def test_the_instruct_benchmark_times_conversations_against_captions_and_answering_three_ways():
    report = instruct.run(small=True)
    steps = {row["batch"]: row for row in report["conversation_step"]}
    conversations, same_rows, same_tokens = (steps[name] for name in (
        "conversations (3 turns, 3 images)", "captions, as many rows", "captions, about as many tokens"))  # fmt: skip
    assert conversations["rows"] == same_rows["rows"] == 4 and conversations["tokens"] > same_rows["tokens"]
    assert abs(same_tokens["tokens"] - conversations["tokens"]) <= same_rows["tokens"] // same_rows["rows"]
    answering = report["answering"]
    assert [row["batch_size"] for row in answering] == [1, 10, 10, 10]
    assert all(row["questions"] == 30 and row["images"] == 6 for row in answering)
    assert all(row["same_answers_as_one_at_a_time"] for row in answering)
    tables = instruct.format_report(report)
    assert "| conversations (3 turns, 3 images) | 4 |" in tables
    assert "| batched, one vision pass per image | 10 |" in tables
    assert "| batched, one vision pass and one prefill per image | 10 |" in tables


def test_trl_sft_trainer_peer_trains_on_the_same_loss_and_is_timed_step_for_step():
    report = sft_peer.compare(small=True, text_layers=0, vision_layers=0, rows=2, rounds=2)
    assert report["loss"]["ours"] == pytest.approx(report["loss"]["trl"], rel=1e-5)  # the same labelled tokens
    settings = report["settings"]
    assert settings["images"] == 6 and 0 < settings["labelled_tokens"] < settings["tokens"]
    assert report["ours_s"] > 0 and report["trl_s"] > 0
    assert report["ratio_min"] <= report["ratio_median"] <= report["ratio_max"]
    assert "| finetune training step (LLaVA-1.5 stage 2) |" in sft_peer.format_report(report)


def test_the_contrastive_step_benchmark_times_both_losses_and_the_locked_sides():
    rows = contrastive_step.benchmark_contrastive(small=True, batch_size=4, timed_steps=1)
    assert [(row["loss"], row["sides"]) for row in rows] == [
        ("clip", "both trained"), ("sigmoid", "both trained"), ("sigmoid", "lock_image"), ("sigmoid", "lock_text")
    ]  # fmt: skip
    assert all(row["pairs_per_s"] == pytest.approx(4 / row["step_s"]) and row["trainable"] > 0 for row in rows)
    both = rows[1]["trainable"]
    assert both == rows[0]["trainable"] + 1  # SigLIP's learned bias
    model = contrastive_step.dual_encoder(small=True, loss="sigmoid")
    tower, text = (sum(p.numel() for p in part.parameters()) for part in (model.vision_model, model.text_model))
    assert rows[2]["trainable"] == both - tower and rows[3]["trainable"] == both - text  # the locked side's frozen
    assert "| sigmoid | lock_image | 4 |" in contrastive_step.format_rows(rows)


def test_the_tiles_benchmark_measures_whole_tiled_and_hybrid_reads():
    rows = tiles.main(["--small", "--batch_size", "2", "--captions", "2"])
    assert [(row["run"], row["fusion"], row["max_tiles"]) for row in rows] == [
        ("mlp", "early", 1), ("mlp_tiles", "early", 4), ("mlp_hybrid", "hybrid", 4)
    ]  # fmt: skip
    whole, tiled, hybrid = rows
    assert tiled["image_positions"] == 5 * whole["image_positions"]  # 2 x 2 tiles and the thumbnail
    for field in ("image_positions", "sequence_length"):  # hybrid: only the thumbnail in the sequence
        assert hybrid[field] == whole[field]
    assert hybrid["trainable_parameters"] > tiled["trainable_parameters"] == whole["trainable_parameters"]
    assert all(row["samples_per_s"] > 0 and row["captions_per_s"] > 0 for row in rows)


def test_the_fusion_table_lists_each_early_run_once_before_its_deep_fusions():
    measured = {"batch_size": 2, "sequence_length": 9, "trainable_parameters": 1, "samples_per_s": 1.0,
                "peak_memory_mb": 1.0}  # fmt: skip
    names = ["mlp", "mlp_xattn", "perceiver", "mlp_expert", "mlp_adapter", "tokenized"]
    training = [{"projector": name, **measured} for name in names]
    generation = [{"projector": name, "captions_per_s": index / 10} for index, name in enumerate(names)]
    rows = fusion_comparison(training, generation)
    assert [(row["run"], row["fusion"]) for row in rows] == [
        ("mlp", "early"), ("mlp_xattn", "cross_attention"), ("mlp_expert", "visual_expert"), ("mlp_adapter", "adapter"),
        ("tokenized", "tokenized"),
    ]  # fmt: skip
    assert [row["captions_per_s"] for row in rows] == [0.0, 0.1, 0.3, 0.4, 0.5]
