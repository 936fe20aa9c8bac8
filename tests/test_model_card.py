"""`training.model_card`: the model card's metadata and text, and the Hub upload of a run's output directory."""

from huggingface_hub import ModelCard

from data.captions import KARPATHY_SOURCE
from training import TrainingResults, VLMTrainingArguments, model_card
from training.model_card import write_model_card


def test_model_card_names_both_towers_and_the_dataset(tmp_path):
    args = VLMTrainingArguments(
        vision_model="google/siglip-base-patch16-224",
        text_model="Qwen/Qwen2.5-0.5B-Instruct",
        dataset="coco-karpathy",
        image_root=str(tmp_path),
        push_to_hub="user/vlm-mlp",
    )
    metrics = {"loss": 3.2, "CIDEr": 1.31, "METEOR": 0.2052, "BLEU-4": 0.25, "ROUGE-L": 0.45}
    results = TrainingResults(
        output_dir=str(tmp_path), projector_type="mlp", stage="align", num_image_tokens=196,
        trainable_parameters=1_500_000, total_parameters=600_000_000, num_train_images=1000, num_eval_images=1000,
        skipped_train_images=0, skipped_eval_images=0, feature_cache={"train": "computed", "eval": "computed"},
        global_step=320, final_metrics=metrics, best_metric=1.31, best_step=320,
        history=[{"epoch": 10, "step": 320, **metrics}],
        sample_captions=[("391895", "a man riding a bike", "a man on a bicycle")],
        hardware="1 x NVIDIA H100", num_processes=1, mixed_precision="bf16",
        wall_time_s=3600.0, train_time_s=3000.0, samples_per_second=3.3,
    )  # fmt: skip
    write_model_card(str(tmp_path), args, results)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == ["google/siglip-base-patch16-224", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert card.data.datasets == [KARPATHY_SOURCE]
    assert card.data.model_name == "user/vlm-mlp"
    cider = next(result for result in card.data.eval_results if result.metric_name == "CIDEr")
    assert (cider.metric_value, cider.dataset_type, cider.dataset_split) == (1.31, KARPATHY_SOURCE, "validation")
    assert 'from_pretrained("user/vlm-mlp", trust_remote_code=True)' in card.text


def test_push_to_hub_creates_the_repo_and_uploads_the_output_dir(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(model_card, "HfApi", FakeApi)
    model_card.push_output_dir(str(tmp_path), "user/vlm-qformer", private=True)
    assert [call[:2] for call in calls] == [("create_repo", "user/vlm-qformer"), ("upload_folder", "user/vlm-qformer")]
    assert calls[0][2]["private"] and calls[1][2]["folder_path"] == str(tmp_path)
    assert "checkpoint-*" in calls[1][2]["ignore_patterns"]
