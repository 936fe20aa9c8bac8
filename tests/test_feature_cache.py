"""`training.feature_cache`: a frozen tower's features are computed once and reused across epochs and runs."""

from dataclasses import replace
from pathlib import Path

from models.tiny import build_tiny_vlm
from tiny_runs import tiny_args
from training import train


def test_feature_cache_is_reused_across_epochs_and_runs(tmp_path):
    def count_vision_calls(model) -> list[int]:
        calls = [0]
        model.vision_tower.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        return calls

    args = tiny_args(
        tmp_path, max_train_samples=32, num_train_epochs=2, eval_strategy="epoch", predict_with_generate=False
    )
    model, processor = build_tiny_vlm("mlp", seed=0)
    calls = count_vision_calls(model)
    first = train(args, model, processor)
    assert first.feature_cache == {"train": "computed", "eval": "computed"}
    assert calls[0] == 32 // 8 + 8 // 8  # the caching batches only: no tower forward in 2 epochs and evaluations
    assert len(list(Path(args.feature_cache_dir).glob("*.safetensors"))) == 2

    # Another projector on the same tower and data: the cached features are used, the tower never runs.
    model, processor = build_tiny_vlm("linear", seed=0)
    calls = count_vision_calls(model)
    second = train(replace(args, projector_type="linear", output_dir=str(tmp_path / "linear")), model, processor)
    assert second.feature_cache == {"train": "hit", "eval": "hit"}
    assert calls[0] == 0
    assert second.history[-1]["loss"] < 10
