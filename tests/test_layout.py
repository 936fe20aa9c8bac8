"""
The layering of the repository, read from the source: the root holds the Hub-side files and the command lines only;
the Hub-side files import only each other, transformers, torch and the standard library; each package imports only
the packages before it in `PACKAGE_ORDER` (never a command line); inside `training/` each module imports only the ones
before it; and scoring captions needs neither torch nor transformers.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
REMOTE_CODE = (
    "configuration_vlm", "projectors_vlm", "cross_attention_vlm", "modeling_vlm", "tiling_vlm", "processing_vlm",
    "visual_expert_vlm", "adapter_vlm", "tokenized_vlm", "generation_vlm", "loading_vlm", "loss_vlm",
)
COMMAND_LINES = ("app", "eval", "export_onnx", "train_accelerate")
# Each package may import the Hub-side files and the packages before it, never the ones after it.
PACKAGE_ORDER = (
    "models", "data", "evaluation", "onnx_export", "demo", "qformer_pretraining", "contrastive_pretraining", "training",
    "benchmarks",
)
# Each module of the training package may import the ones before it, never the ones after it.
TRAINING_ORDER = (
    "argument_rules", "arguments", "integrity", "feature_cache", "text_feature_cache", "length_grouping", "data",
    "conversation_data", "pair_data", "model_setup", "fsdp", "checkpointing", "output_dir", "run_lock", "preemption",
    "saved_models", "telemetry", "question_evaluation", "evaluation", "retrieval_evaluation", "run_data", "results",
    "model_card", "loop", "comparison",
)  # fmt: skip


def imports(path: Path) -> set[str]:
    """The modules `path` imports: top-level names of absolute imports, `.name` for relative ones."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add("." + node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # from . import a, b
            found |= {f".{alias.name}" for alias in node.names}
    return found


def test_the_root_holds_the_hub_files_and_the_command_lines_only():
    assert {path.stem for path in REPO_ROOT.glob("*.py")} == {*REMOTE_CODE, *COMMAND_LINES}
    packages = {path.parent.name for path in REPO_ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(PACKAGE_ORDER), "add the new package to PACKAGE_ORDER"


def test_every_training_module_has_its_place_in_the_layering():
    modules = {path.stem for path in (REPO_ROOT / "training").glob("*.py")} - {"__init__"}
    assert modules == set(TRAINING_ORDER), "add the new training module to TRAINING_ORDER"


def test_the_model_file_imports_every_hub_module_the_others_import():
    # transformers 4.57 copies only the loaded module's own relative imports into its module cache: a Hub file that
    # only another Hub file imports would be missing when a saved model is loaded without its processor.
    imported_by_hub_files = set().union(*(imports(REPO_ROOT / f"{module}.py") for module in REMOTE_CODE))
    relative = {name for name in imported_by_hub_files if name.startswith(".")}
    assert relative <= imports(REPO_ROOT / "modeling_vlm.py")


@pytest.mark.parametrize("module", REMOTE_CODE)
def test_remote_code_imports_only_each_other_transformers_torch_and_the_standard_library(module):
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers"} | {f".{name}" for name in REMOTE_CODE}
    allowed |= set(REMOTE_CODE)  # the absolute fallback used when imported as a local module
    assert imports(REPO_ROOT / f"{module}.py") <= allowed


@pytest.mark.parametrize(
    "path",
    sorted(path for package in PACKAGE_ORDER for path in (REPO_ROOT / package).glob("*.py")),
    ids=lambda path: f"{path.parent.name}.{path.stem}",
)
def test_packages_import_only_the_packages_before_them(path):
    later = set(PACKAGE_ORDER[PACKAGE_ORDER.index(path.parent.name) + 1 :])
    assert not imports(path) & (later | set(COMMAND_LINES))


@pytest.mark.parametrize("module", TRAINING_ORDER)
def test_training_modules_import_only_modules_before_them(module):
    imported = imports(REPO_ROOT / "training" / f"{module}.py")
    later = {f".{name}" for name in TRAINING_ORDER[TRAINING_ORDER.index(module) :]}
    assert not imported & later
    assert not imported & {"training", "benchmarks", *COMMAND_LINES}


def test_no_command_line_imports_another():
    for name in COMMAND_LINES:
        assert not imports(REPO_ROOT / f"{name}.py") & set(COMMAND_LINES), name


def test_the_evaluate_metric_imports_only_the_scorer():
    metric = REPO_ROOT / "metrics" / "coco_caption" / "coco_caption.py"
    assert imports(metric) == {"evaluation", "datasets", "evaluate"}


def test_scoring_captions_loads_neither_torch_nor_transformers():
    code = "import sys, evaluation.caption_metrics; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(completed.stdout.replace("'", '"')) == []
