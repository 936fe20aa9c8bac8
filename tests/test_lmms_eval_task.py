"""
The local lmms-eval task (`evaluation/lmms_eval_task.py`) and the checks of an lmms-eval run
(`evaluation/lmms_eval_check.py`), offline and without lmms-eval: the parquet file is read back the way lmms-eval
reads it (`datasets.load_dataset("parquet")`), the YAML with a loader for its `!function` tags, and the results and
samples files are written in lmms-eval 0.7.3's schema. `eval.py --dtype bfloat16` is compared with lmms-eval's own
loading and generation calls, as `test_hub_lmms_eval.py` replays them.
"""

import ast
import json
import re
from pathlib import Path

import pyarrow.parquet
import pytest
import torch
import yaml
from datasets import load_dataset
from model_checks import train_to_answer
from PIL import Image
from test_hub_lmms_eval import generate_until_like_lmms_eval, load_like_lmms_eval, user_turn

import eval as vlm_eval
from data.captions import load_captions
from evaluation import lmms_eval_check
from evaluation.caption_metrics import score_captions
from evaluation.captioning import load_captioning_model
from evaluation.lmms_eval_check import (
    LmmsEvalCheckError,
    check_eval_py,
    check_lmms_eval_run,
    find_output_files,
    main,
    read_reported_scores,
    read_samples,
    score_differences,
)
from evaluation.lmms_eval_task import (
    COCO_CAPTION_COLUMNS,
    LMMS_EVAL_CAPTION_PROMPT,
    LMMS_EVAL_METRICS,
    UTILS_FUNCTIONS,
    coco_caption_dataset,
    coco_image_id,
    question_id,
    shapes_caption_dataset,
    task_yaml,
    write_task,
)
from models.tiny import build_tiny_vlm


TASK = "tiny_cap"
IMAGE_IDS = ["img-a", "img-b", "img-c"]
REFERENCES = [
    ["a red box.", "a big red square."],
    ["a blue box.", "a tall blue rectangle."],
    ["a green square on black.", "a small green square."],
]
PREDICTIONS = {0: "a red square.", 1: "a blue rectangle.", 2: "a green square."}
# lmms-eval 0.7.3's coco2017_cap_val: its metrics and the aggregation function of each, in its file's order.
LMMS_EVAL_COCO_METRICS = {
    "coco_Bleu_4": "coco_bleu4", "coco_Bleu_3": "coco_bleu3", "coco_Bleu_2": "coco_bleu2",
    "coco_Bleu_1": "coco_bleu1", "coco_METEOR": "coco_meteor", "coco_ROUGE_L": "coco_rougel",
    "coco_CIDEr": "coco_cider",
}  # fmt: skip


class FunctionTagLoader(yaml.SafeLoader):
    """Reads lmms-eval's `!function module.name` tags as the string `"!function module.name"`."""


FunctionTagLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


_SCORES: dict[str, dict[str, float]] = {}


def cached_score_captions(predictions: dict, references: dict) -> dict[str, float]:
    """`score_captions`, computed once per distinct input in this module (each call starts METEOR's JVM: seconds)."""
    key = json.dumps([sorted(predictions.items()), sorted((key, list(refs)) for key, refs in references.items())])
    if key not in _SCORES:
        _SCORES[key] = score_captions(predictions, references)
    return dict(_SCORES[key])


@pytest.fixture(autouse=True)
def memoized_scorer(monkeypatch):
    monkeypatch.setattr(lmms_eval_check, "score_captions", cached_score_captions)


@pytest.fixture
def task_dir(tmp_path, images) -> Path:
    write_task(tmp_path / "task", TASK, coco_caption_dataset(IMAGE_IDS, images, REFERENCES))
    return tmp_path / "task"


@pytest.fixture(scope="module")
def true_scores() -> dict[str, float]:
    return cached_score_captions(PREDICTIONS, dict(enumerate(REFERENCES)))


def write_lmms_eval_outputs(output_path: Path, scores: dict[str, float], predictions=PREDICTIONS, refs=REFERENCES):
    """A results file and a samples file as lmms-eval 0.7.3 writes them with `--log_samples` (trimmed)."""
    directory = output_path / "outputs__model"
    directory.mkdir(parents=True)
    metrics = {f"{name},none": scores[ours] for name, ours in LMMS_EVAL_METRICS.items()}
    metrics |= {f"{name}_stderr,none": "N/A" for name in LMMS_EVAL_METRICS}
    results = {"results": {TASK: {"alias": TASK, **metrics}}, "lmms_eval_version": "0.7.3"}
    (directory / "20261206_010931_results.json").write_text(json.dumps(results))
    lines = []
    for image_id, pred in predictions.items():
        record = {"answer": refs[image_id], "pred": pred, "image_id": image_id, "id": image_id}
        sample = {"doc_id": image_id, "target": str(refs[image_id]), "filtered_resps": pred}
        lines.append(json.dumps(sample | {metric: record for metric in LMMS_EVAL_METRICS}))
    (directory / f"20261206_010931_samples_{TASK}.jsonl").write_text("\n".join(lines) + "\n")


def write_eval_py_outputs(eval_dir: Path, captions: dict[str, str], scores: dict[str, float]) -> None:
    """`eval.py`'s predictions and metrics files for one model."""
    eval_dir.mkdir(parents=True)
    rows = [{"image_id": image_id, "caption": caption} for image_id, caption in captions.items()]
    (eval_dir / "predictions_model.json").write_text(json.dumps(rows))
    (eval_dir / "metrics_model.json").write_text(json.dumps({"model": "model", "num_images": len(rows), **scores}))


# --- the task -----------------------------------------------------------------------------------------------------


def test_question_ids_give_back_the_row_as_lmms_eval_reads_them():
    assert question_id(7) == "000000000007.png"
    for index in (0, 7, 123456):
        # coco_process_result's own expression
        assert int(question_id(index).split("_")[-1].split(".")[0]) == coco_image_id(question_id(index)) == index
    assert coco_image_id("COCO_val2014_000000000042.jpg") == 42


def test_the_parquet_file_has_coco_caption_columns_and_reads_back_as_lmms_eval_loads_it(task_dir, images, tmp_path):
    parquet = task_dir / f"{TASK}.parquet"
    assert tuple(pyarrow.parquet.read_schema(parquet).names) == COCO_CAPTION_COLUMNS
    rows = load_dataset("parquet", data_files={"test": str(parquet)}, cache_dir=str(tmp_path / "cache"))["test"]
    assert len(rows) == 3
    assert rows["question_id"] == [question_id(i) for i in range(3)]
    assert rows["id"] == [0, 1, 2]
    assert rows["answer"] == REFERENCES
    assert rows["file_name"] == [f"{image_id}.png" for image_id in IMAGE_IDS]
    assert rows["question"] == [LMMS_EVAL_CAPTION_PROMPT] * 3
    assert [(row["width"], row["height"]) for row in rows] == [image.size for image in images]
    for row, image in zip(rows, images):
        assert isinstance(row["image"], Image.Image)
        assert list(row["image"].convert("RGB").getdata()) == list(image.getdata())


def test_the_yaml_is_coco2017_cap_val_on_the_local_file(task_dir):
    config = yaml.load((task_dir / f"{TASK}.yaml").read_text(), Loader=FunctionTagLoader)
    assert config["task"] == TASK
    assert config["dataset_path"] == "parquet"
    parquet = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert parquet.is_absolute() and parquet == (task_dir / f"{TASK}.parquet").resolve()
    assert config["test_split"] == "test" and config["output_type"] == "generate_until"
    assert config["doc_to_visual"] == "!function utils.coco_doc_to_visual"
    assert config["doc_to_text"] == "!function utils.coco_doc_to_text"
    assert config["process_results"] == "!function utils.coco_process_result"
    assert config["doc_to_target"] == "answer"
    assert config["generation_kwargs"] == {
        "max_new_tokens": 64, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
    }  # fmt: skip
    assert [(m["metric"], m["aggregation"], m["higher_is_better"]) for m in config["metric_list"]] == [
        (metric, f"!function utils.{function}", True) for metric, function in LMMS_EVAL_COCO_METRICS.items()
    ]


def test_utils_re_exports_every_function_the_yaml_names_from_lmms_eval(task_dir):
    tree = ast.parse((task_dir / "utils.py").read_text())
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert [node.module for node in imports] == ["lmms_eval.tasks.coco_cap.utils"]
    exported = {alias.name for alias in imports[0].names}
    lines = (task_dir / f"{TASK}.yaml").read_text().splitlines()
    named = {line.split("utils.")[1] for line in lines if "utils." in line}
    assert named == exported == set(UTILS_FUNCTIONS)


def test_the_yaml_quotes_a_path_with_spaces(tmp_path):
    path = tmp_path / "a dir: with spaces" / "x.parquet"
    config = yaml.load(task_yaml("t", path), Loader=FunctionTagLoader)
    assert config["dataset_kwargs"]["data_files"]["test"] == str(path.resolve())


def test_the_shapes_task_holds_the_split_eval_py_reads():
    dataset = shapes_caption_dataset("test", 3)
    expected = load_captions("shapes", "test", max_samples=3)
    assert dataset["file_name"] == [f"{image_id}.png" for image_id in expected["image_id"]]
    assert dataset["answer"] == expected["captions"]


# --- the checks ---------------------------------------------------------------------------------------------------


def test_the_check_passes_when_lmms_eval_scores_equal_ours(tmp_path, task_dir, true_scores, capsys):
    write_lmms_eval_outputs(tmp_path / "out", true_scores)
    summary = check_lmms_eval_run(tmp_path / "out", TASK, task_dir)
    assert summary["images"] == 3
    assert summary["lmms_eval"] == summary["score_captions"] == true_scores
    assert read_samples(summary["samples"]) == (PREDICTIONS, dict(enumerate(REFERENCES)))
    assert main(["--output_path", str(tmp_path / "out"), "--task_name", TASK, "--task_dir", str(task_dir)]) == 0
    assert "lmms-eval check passed: 3 images" in capsys.readouterr().out


def test_the_check_fails_naming_the_metric_whose_score_differs(tmp_path, task_dir, true_scores, capsys):
    write_lmms_eval_outputs(tmp_path / "out", true_scores | {"CIDEr": true_scores["CIDEr"] + 1e-6})
    with pytest.raises(LmmsEvalCheckError, match=r"CIDEr: .* != ") as error:
        check_lmms_eval_run(tmp_path / "out", TASK, task_dir)
    assert "BLEU" not in str(error.value)
    assert main(["--output_path", str(tmp_path / "out"), "--task_name", TASK]) == 1
    assert "lmms-eval check FAILED" in capsys.readouterr().err


def test_scores_agree_within_the_stated_tolerance_only():
    scores = {"CIDEr": 2.552058065510723}
    assert score_differences(scores, {"CIDEr": 2.552058065510723 * (1 + 1e-12)}) == []
    assert score_differences(scores, {"CIDEr": 2.552058065510723 * (1 + 1e-8)}) != []
    assert score_differences(scores, {"CIDEr": "N/A"}) == ["CIDEr: 'N/A' != 2.552058065510723"]


def test_missing_files_fail_with_what_to_look_at(tmp_path, true_scores):
    with pytest.raises(LmmsEvalCheckError, match="no samples file .*--log_samples.*exits 0"):
        find_output_files(tmp_path, TASK)
    write_lmms_eval_outputs(tmp_path / "out", true_scores)
    next((tmp_path / "out").glob("**/*_results.json")).unlink()
    with pytest.raises(LmmsEvalCheckError, match="no results file 20261206_010931_results.json"):
        find_output_files(tmp_path / "out", TASK)
    assert main(["--output_path", str(tmp_path / "nothing"), "--task_name", TASK]) == 1


def test_a_results_file_without_the_task_or_a_metric_is_refused(tmp_path, true_scores):
    write_lmms_eval_outputs(tmp_path / "out", true_scores)
    results_path, _ = find_output_files(tmp_path / "out", TASK)
    with pytest.raises(LmmsEvalCheckError, match="no results for task 'other'"):
        read_reported_scores(results_path, "other")
    results = json.loads(results_path.read_text())
    del results["results"][TASK]["coco_METEOR,none"]
    results_path.write_text(json.dumps(results))
    with pytest.raises(LmmsEvalCheckError, match="no number for 'coco_METEOR'"):
        read_reported_scores(results_path, TASK)


def test_samples_must_cover_the_task_rows_once(tmp_path, task_dir, true_scores):
    write_lmms_eval_outputs(tmp_path / "out", true_scores, predictions={0: "a red square.", 1: "a blue box."})
    with pytest.raises(LmmsEvalCheckError, match=r"samples of 2 images, the task has 3 rows.*\[2\]"):
        check_lmms_eval_run(tmp_path / "out", TASK, task_dir)
    _, samples = find_output_files(tmp_path / "out", TASK)
    samples.write_text(samples.read_text() * 2)
    with pytest.raises(LmmsEvalCheckError, match="image_id 0 appears twice"):
        read_samples(samples)


def test_eval_py_passes_with_lmms_eval_captions_and_scores(tmp_path, task_dir, true_scores, capsys):
    write_lmms_eval_outputs(tmp_path / "out", true_scores)
    write_eval_py_outputs(tmp_path / "eval", {IMAGE_IDS[i]: f" {c}" for i, c in PREDICTIONS.items()}, true_scores)
    summary = check_lmms_eval_run(tmp_path / "out", TASK, task_dir, tmp_path / "eval")
    assert summary["eval_py"] == {"identical_captions": 3, "scores": true_scores}
    args = ["--output_path", str(tmp_path / "out"), "--task_name", TASK, "--task_dir", str(task_dir)]
    assert main([*args, "--eval_dir", str(tmp_path / "eval")]) == 0
    assert "eval.py wrote its 3 captions word for word, same scores" in capsys.readouterr().out


def test_eval_py_fails_on_a_differing_caption_naming_its_id(tmp_path, true_scores):
    lmms_captions = {IMAGE_IDS[i]: caption for i, caption in PREDICTIONS.items()}
    write_eval_py_outputs(tmp_path / "fp32", lmms_captions | {"img-b": "a blue square."}, true_scores)
    expected = r"--dtype bfloat16\?:\n  img-b: 'a blue rectangle\.' != 'a blue square\.'$"
    with pytest.raises(LmmsEvalCheckError, match=expected):
        check_eval_py(tmp_path / "fp32", lmms_captions, true_scores)
    write_eval_py_outputs(tmp_path / "other", {"img-z": "x.", "img-a": "y.", "img-b": "z."}, true_scores)
    with pytest.raises(LmmsEvalCheckError, match=r"ids on one side only: \['img-c', 'img-z'\]"):
        check_eval_py(tmp_path / "other", lmms_captions, true_scores)


def test_eval_py_fails_on_a_differing_score_of_identical_captions(tmp_path, task_dir, true_scores):
    lmms_captions = {IMAGE_IDS[i]: caption for i, caption in PREDICTIONS.items()}
    write_eval_py_outputs(tmp_path / "off", lmms_captions, true_scores | {"METEOR": 0.5})
    expected = rf"eval\.py's \(right\):\n  METEOR: {re.escape(repr(true_scores['METEOR']))} != 0\.5$"
    with pytest.raises(LmmsEvalCheckError, match=expected):
        check_eval_py(tmp_path / "off", lmms_captions, true_scores)
    write_lmms_eval_outputs(tmp_path / "out", true_scores)
    with pytest.raises(LmmsEvalCheckError, match="needs the task directory"):
        check_lmms_eval_run(tmp_path / "out", TASK, None, tmp_path / "off")


# --- eval.py in bfloat16 against lmms-eval -------------------------------------------------------------------------


def answer(caption: str) -> dict:
    return {"role": "assistant", "content": caption}


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> tuple[str, list[Image.Image], list[str]]:
    """A tiny VLM trained to caption two images with lmms-eval's prompt, saved; its images and captions."""
    images = [Image.new("RGB", (48, 40), (220, 30, 30)), Image.new("RGB", (32, 64), (20, 40, 230))]
    captions = ["a red box.", "a blue box, tall."]
    torch.manual_seed(0)
    model, processor = build_tiny_vlm("mlp")
    chats = [user_turn(image, LMMS_EVAL_CAPTION_PROMPT) + [answer(cap)] for image, cap in zip(images, captions)]
    directory = train_to_answer(model, processor, images, chats, tmp_path_factory.mktemp("lmms-eval-check-model"))
    return directory, images, captions


def test_eval_py_in_bfloat16_writes_what_lmms_eval_generates(trained_model, tmp_path):
    directory, images, captions = trained_model
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(images):
        image.save(folder / f"{index}.png")
    lines = [json.dumps({"file_name": f"{i}.png", "caption": c, "id": str(i)}) + "\n" for i, c in enumerate(captions)]
    (folder / "metadata.jsonl").write_text("".join(lines))
    vlm_eval.main(
        ["--model", directory, "--dataset", str(folder), "--split", "train", "--id_column", "id", "--dtype", "bfloat16",
         "--prompt", LMMS_EVAL_CAPTION_PROMPT, "--batch_size", "2", "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    eval_py = json.loads(next((tmp_path / "out").glob("predictions_*.json")).read_text())
    model, processor, tokenizer = load_like_lmms_eval(directory)
    docs = [(image, LMMS_EVAL_CAPTION_PROMPT) for image in images]
    lmms_eval, _ = generate_until_like_lmms_eval(model, processor, tokenizer, docs, padding_side_kwarg=False)
    lmms_eval_captions = {str(index): caption.strip() for index, caption in enumerate(lmms_eval)}
    assert {row["image_id"]: row["caption"] for row in eval_py} == lmms_eval_captions
    assert [caption.strip() for caption in lmms_eval] == captions


def test_bfloat16_loading_keeps_the_rotary_frequencies_in_float32_as_lmms_eval_does(trained_model):
    directory = trained_model[0]
    ours, _ = load_captioning_model(directory, "cpu", torch.bfloat16)
    theirs = load_like_lmms_eval(directory)[0]
    dtypes = {name: buffer.dtype for name, buffer in ours.named_buffers() if name.endswith("inv_freq")}
    assert dtypes and set(dtypes.values()) == {torch.float32}
    assert {parameter.dtype for parameter in ours.parameters()} == {torch.bfloat16}
    assert {name: buffer.dtype for name, buffer in theirs.named_buffers()} == {
        name: buffer.dtype for name, buffer in ours.named_buffers()
    }


# --- the lmms-eval venv -------------------------------------------------------------------------------------------

SHARED_RELEASES = (
    "transformers", "tokenizers", "huggingface_hub", "safetensors", "accelerate", "datasets", "numpy", "pillow",
    "pycocoevalcap", "pycocotools", "pyarrow",
)  # fmt: skip


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, by normalized name (`huggingface-hub` for `huggingface_hub`)."""
    lines = [line.split("==") for line in path.read_text().splitlines() if "==" in line and not line.startswith("#")]
    return {normalized(name): version.strip() for name, version in lines}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip().lower())


def test_the_lmms_eval_venv_runs_the_model_and_the_scorer_at_the_project_releases():
    constraints = Path(__file__).resolve().parent.parent / "constraints"
    lmms_eval, project = pins(constraints / "lmms_eval.txt"), pins(constraints / "pinned.txt")
    shared = [normalized(name) for name in SHARED_RELEASES]
    assert {name: lmms_eval.get(name) for name in shared} == {name: project[name] for name in shared}
    assert lmms_eval["lmms-eval"] == "0.7.3"
    assert int(lmms_eval["filelock"].split(".")[0]) < 4, "lmms-eval 0.7.3 imports filelock._api, gone in filelock 4"
    assert "torchvision" not in lmms_eval and "torch" not in lmms_eval, "torch: the CPU build, installed first"
