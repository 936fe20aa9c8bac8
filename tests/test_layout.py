"""
The layering of the repository, read from the source: the Hub-side files import only each other, transformers, torch
and the standard library; the libraries never import the training package or the command lines above them; inside
`training/` each module imports only the ones before it; and scoring captions needs neither torch nor transformers.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
REMOTE_CODE = ("configuration_vlm", "modeling_vlm", "processing_vlm")
COMMAND_LINES = ("eval", "train_accelerate")
# Every other top-level module is a library.
LIBRARIES = tuple(
    sorted(path.stem for path in REPO_ROOT.glob("*.py") if path.stem not in {*REMOTE_CODE, *COMMAND_LINES})
)
# Each module of the training package may import the ones before it, never the ones after it.
TRAINING_ORDER = (
    "arguments", "integrity", "feature_cache", "length_grouping", "data", "pair_data", "model_setup", "checkpointing",
    "output_dir", "saved_models", "telemetry", "evaluation", "retrieval_evaluation", "results", "model_card", "loop",
    "comparison",
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


def test_every_module_has_its_place_in_the_layering():
    assert set(LIBRARIES) >= {"caption_data", "caption_metrics", "captioning", "markdown_tables", "tiny_vlm"}
    modules = {path.stem for path in (REPO_ROOT / "training").glob("*.py")} - {"__init__"}
    assert modules == set(TRAINING_ORDER), "add the new training module to TRAINING_ORDER"


@pytest.mark.parametrize("module", REMOTE_CODE)
def test_remote_code_imports_only_each_other_transformers_torch_and_the_standard_library(module):
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers"} | {f".{name}" for name in REMOTE_CODE}
    allowed |= set(REMOTE_CODE)  # the absolute fallback used when imported as a local module
    assert imports(REPO_ROOT / f"{module}.py") <= allowed


@pytest.mark.parametrize("module", LIBRARIES)
def test_libraries_import_neither_training_nor_the_command_lines(module):
    assert not imports(REPO_ROOT / f"{module}.py") & {"training", "benchmarks", *COMMAND_LINES}


@pytest.mark.parametrize("module", TRAINING_ORDER)
def test_training_modules_import_only_modules_before_them(module):
    imported = imports(REPO_ROOT / "training" / f"{module}.py")
    later = {f".{name}" for name in TRAINING_ORDER[TRAINING_ORDER.index(module) :]}
    assert not imported & later
    assert not imported & {"training", "benchmarks", *COMMAND_LINES}


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "qformer_pretraining").glob("*.py")), ids=lambda p: p.stem)
def test_the_stage1_package_is_a_library(path):
    assert not imports(path) & {"training", "benchmarks", *COMMAND_LINES}


def test_nothing_imports_a_command_line():
    sources = [*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("training/*.py"), *REPO_ROOT.glob("benchmarks/*.py")]
    for path in sources:
        assert not imports(path) & set(COMMAND_LINES), path


def test_the_evaluate_metric_imports_only_the_scorer():
    metric = REPO_ROOT / "metrics" / "coco_caption" / "coco_caption.py"
    assert imports(metric) == {"caption_metrics", "datasets", "evaluate"}


def test_scoring_captions_loads_neither_torch_nor_transformers():
    code = "import sys, caption_metrics; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(completed.stdout.replace("'", '"')) == []
