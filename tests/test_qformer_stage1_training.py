"""
Q-Former stage 1 through `train()` (offline, tiny tower and tiny BERT): the run and what it leaves (model, processor,
model card with retrieval, per-objective logs), resume, the hand-off into the VLM's `qformer` projector, the settings
that are refused, and the comparison's `qformer_stage1` run.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_accelerate
from qformer_pretraining import QFormerForPretraining, QFormerPretrainingProcessor
from tiny_runs import CONFIGS, assert_same_weights, launch_two_processes, saved_weights, tiny_args
from training import STAGE1_RUN, train
from training.model_setup import build_model


def stage1_args(tmp_path: Path, **overrides):
    settings = {"stage": "qformer_stage1", "max_train_samples": 48, "max_eval_samples": 16, "eval_strategy": "epoch"}
    return tiny_args(tmp_path, **{**settings, **overrides})


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("stage1")
    args = stage1_args(tmp_path, num_train_epochs=2, report_to="tensorboard", logging_steps=2, retrieval_rerank_k=4)
    return args, train(args)


def test_a_stage1_run_reports_retrieval_per_epoch_and_logs_each_objective(stage1_run):
    args, results = stage1_run
    assert [record["epoch"] for record in results.history] == [1, 2]
    for record in results.history:
        assert {"loss", "loss_itc", "loss_itm", "loss_itg", "i2t_R1", "t2i_R10", "recall_mean"} <= record.keys()
        assert 0.0 <= record["i2t_R1"] <= record["i2t_R5"] <= record["i2t_R10"] <= 1.0
    assert (results.projector_type, results.fusion, results.stage) == ("qformer", "none", "qformer_stage1")
    output_dir = Path(args.output_dir)
    events = EventAccumulator(str(next((output_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_itc", "train/loss_itm", "train/loss_itg", "eval/i2t_R1", "eval/t2i_R1"} <= tags
    card = ModelCard.load(output_dir / "README.md")
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert reported["t2i_R1"] == round(results.final_metrics["t2i_R1"], 4)
    assert "ITC + ITM + ITG" in card.text and "top 4 re-ranked by ITM" in card.text
    assert "--qformer_init" in card.text
    model = QFormerForPretraining.from_pretrained(output_dir)
    assert QFormerPretrainingProcessor.from_pretrained(output_dir).decoder_token_id == model.config.decoder_token_id
    assert (output_dir / "best" / "trainable.safetensors").is_file()  # best by recall_mean, lean


def test_the_stage1_qformer_loads_into_the_vlm_projector_with_equal_weights(stage1_run, tmp_path):
    args, _ = stage1_run
    saved = saved_weights(Path(args.output_dir))
    stage2 = tiny_args(tmp_path, projector_type="qformer", qformer_init=args.output_dir)
    vlm, _ = build_model(stage2)
    projector = vlm.multi_modal_projector.state_dict()
    loaded = [name for name in projector if not name.startswith("linear.")]
    assert "query_tokens" in loaded and any("crossattention" in name for name in loaded)
    for name in loaded:
        assert torch.equal(projector[name], saved[name]), name
    untrained, _ = build_model(tiny_args(tmp_path, projector_type="qformer"))
    assert not torch.equal(untrained.multi_modal_projector.query_tokens, projector["query_tokens"])
    # Stage 2 trains from it as usual.
    results = train(replace(stage2, max_steps=2, output_dir=str(tmp_path / "stage2")))
    assert results.global_step == 2


def test_a_stage1_qformer_is_refused_for_another_vision_tower_or_shape(stage1_run, tmp_path):
    args, _ = stage1_run
    with pytest.raises(ValueError, match="trained on the features of a different vision tower"):
        build_model(tiny_args(tmp_path, projector_type="qformer", qformer_init=args.output_dir, seed=1))
    with pytest.raises(
        ValueError, match=r"qformer_num_queries=4 conflicts with the stage-1 Q-Former .*\(qformer_num_queries=8\)"
    ):
        build_model(
            tiny_args(
                tmp_path,
                projector_type="qformer",
                qformer_init=args.output_dir,
                model_config={"qformer_num_queries": 4},
            )
        )


def test_resume_mid_stage1_gives_the_uninterrupted_result(tmp_path):
    args = stage1_args(tmp_path, max_steps=7, save_steps=3, save_total_limit=5, eval_strategy="no",
                       output_dir=str(tmp_path / "straight"))  # fmt: skip
    train(args)
    state = json.loads((tmp_path / "straight" / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)  # mid-epoch: 6 batches per epoch
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed_dir / "checkpoint-3")
    train(replace(args, output_dir=str(resumed_dir), resume_from_checkpoint="latest"))
    expected = saved_weights(tmp_path / "straight")
    assert_same_weights(saved_weights(resumed_dir), expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_name_or_path": "some/vlm", "model": None}, "stage qformer_stage1 trains a new Q-Former from BERT"),
        ({"projector_type": "mlp"}, "stage qformer_stage1 pretrains the qformer projector on a frozen vision tower"),
        ({"unfreeze_vision": True}, "pretrains the qformer projector on a frozen vision tower"),
        ({"stage": "align", "bert_model": "bert-base-uncased"}, "bert_model initialises the stages qformer_stage1 and"),
        ({"stage": "align", "projector_type": "mlp", "qformer_init": "x"}, "qformer_init='x' starts a new qformer"),
    ],
)
def test_stage1_settings_that_cannot_work_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        stage1_args(tmp_path, **overrides)


def test_stage1_without_a_language_model_takes_the_vision_model_alone(tmp_path):
    args = stage1_args(tmp_path, model=None, vision_model="google/siglip-base-patch16-224")
    assert (args.text_model, args.metric_for_best_model) == (None, "recall_mean")
    with pytest.raises(ValueError, match="`vision_model` and `text_model` go together"):
        tiny_args(tmp_path, model=None, vision_model="google/siglip-base-patch16-224")


def test_the_comparison_runs_stage1_then_the_qformer_from_it(tmp_path):
    runs = train_accelerate.comparison_runs("all", ["--output_dir", str(tmp_path)], str(CONFIGS / "tiny_shapes.yaml"))
    *_, stage1, stage2 = runs
    assert (stage1.stage, stage1.projector_type, Path(stage1.output_dir)) == (
        "qformer_stage1",
        "qformer",
        tmp_path / STAGE1_RUN / "stage1",
    )
    assert (stage2.stage, stage2.qformer_init, Path(stage2.output_dir)) == (
        "finetune",
        stage1.output_dir,
        tmp_path / STAGE1_RUN,
    )
    assert (stage1.num_train_epochs, stage1.learning_rate, stage1.seed) == (
        stage2.num_train_epochs,
        stage2.learning_rate,
        stage2.seed,
    )
    assert stage1.metric_for_best_model == "recall_mean" and stage2.metric_for_best_model == "CIDEr"


GATHER_CHECK = """
import torch
from accelerate import Accelerator
from qformer_pretraining.objectives import gather_with_local_grad

accelerator = Accelerator(cpu=True)  # as in a run, the accelerator sets up the processes first
rank = accelerator.process_index
local = torch.full((3 - rank, 2), float(rank + 1), requires_grad=True)  # 3 rows on process 0, 2 on process 1
gathered, real, start = gather_with_local_grad(local)
assert gathered.shape == (6, 2) and start == 3 * rank, (gathered.shape, start)
assert real.tolist() == [True, True, True, True, True, False], real
assert gathered[real].tolist() == [[1.0, 1.0]] * 3 + [[2.0, 2.0]] * 2, gathered
(gathered[real] * 5).sum().backward()
assert local.grad.tolist() == [[5.0, 5.0]] * len(local), local.grad  # only the local rows carry gradients
accelerator.end_training()  # destroys the process group: gloo can abort at exit otherwise
"""


def test_contrastive_negatives_come_from_every_process_with_gradients_for_the_local_part(tmp_path):
    script = tmp_path / "gather_check.py"
    script.write_text(GATHER_CHECK)
    completed = launch_two_processes([str(script)])
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_stage1_trains_and_evaluates_retrieval_over_two_processes(tmp_path):
    output_dir = tmp_path / "stage1"
    completed = launch_two_processes(
        ["train_accelerate.py", "--config", str(CONFIGS / "tiny_shapes.yaml"), "--stage", "qformer_stage1",
         "--projector_type", "qformer", "--use_cpu", "--max_train_samples", "32", "--max_eval_samples", "6",
         "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "2",
         "--retrieval_rerank_k", "2", "--report_to", "none", "--output_dir", str(output_dir),
         "--feature_cache_dir", str(tmp_path / "cache")]
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((output_dir / "training_results.json").read_text())
    assert (results["num_processes"], results["global_step"], results["num_eval_images"]) == (2, 2, 6)
    assert 0.0 <= results["final_metrics"]["t2i_R1"] <= 1.0 and "loss_itc" in results["final_metrics"]
