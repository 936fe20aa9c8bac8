"""The synthetic questions: every answer checked against the scene's ground truth, POPE's three negative samplings."""

import re
from collections import Counter

import pytest
from datasets import Image as ImageFeature
from datasets import List

from data.captions import make_shapes_dataset
from data.conversations import CONVERSATION_FEATURES, check_conversation
from data.shapes import shapes_scenes
from data.shapes_vqa import (
    ALL_OBJECTS,
    POSITION_ANSWERS,
    QUESTION_TYPES,
    make_shapes_conversations,
    make_shapes_pope,
    make_shapes_vqa,
    object_name,
    object_statistics,
)
from data.vqa_benchmarks import POPE_FEATURES, VQA_FEATURES


PHRASE_POSITIONS = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom"}
RELATION_ORDER = {"to the left of": ("left", "right"), "to the right of": ("right", "left"), "above": ("top", "bottom"),
                  "below": ("bottom", "top")}  # fmt: skip
NUM_SCENES = 120


def pick(objects, key, word, phrase):
    """The one object whose `key` is `word` (and, with a position `phrase`, at that position)."""
    found = [o for o in objects if o[key] == word and (phrase is None or o["position"] == PHRASE_POSITIONS[phrase])]
    assert len(found) == 1, f"the question does not single out one object: {objects}"
    return found[0]


def truth(question: str, objects: list[dict]) -> list[str]:
    """The ten human answers a question should have, computed from the scene alone."""
    names = [object_name(o) for o in objects]
    if match := re.fullmatch(r"Is there a (\w+ \w+) in the image\?", question):
        return ["yes" if match[1] in names else "no"] * 10
    if question == "How many shapes are there in the image?":
        return [str(len(objects))] * 10
    phrase = r"(?: (on the left|on the right|at the top|at the bottom))?"
    if match := re.fullmatch(rf"What color is the (\w+){phrase}\?", question):
        return [pick(objects, "shape", match[1], match[2])["color"]] * 10
    if match := re.fullmatch(rf"What shape is the (\w+) object{phrase}\?", question):
        return [pick(objects, "color", match[1], match[2])["shape"]] * 10
    if match := re.fullmatch(r"Where is the (\w+ \w+)\?", question):
        assert names.count(match[1]) == 1
        return POSITION_ANSWERS[objects[names.index(match[1])]["position"]]
    relation = r"(to the left of|to the right of|above|below)"
    if match := re.fullmatch(rf"Is the (\w+ \w+) {relation} the (\w+ \w+)\?", question):
        first, second = objects[names.index(match[1])], objects[names.index(match[3])]
        return ["yes" if (first["position"], second["position"]) == RELATION_ORDER[match[2]] else "no"] * 10
    if match := re.fullmatch(r"Is there a (\w+ \w+) (on the left|on the right|at the top|at the bottom)\?", question):
        assert names == [match[1]] * 2  # asked by position only when both shapes look alike
        return ["yes" if PHRASE_POSITIONS[match[2]] in {o["position"] for o in objects} else "no"] * 10
    raise AssertionError(f"unexpected question {question!r}")


@pytest.fixture(scope="module")
def vqa():
    return make_shapes_vqa(NUM_SCENES, seed=1, split="test")


def test_every_answer_is_the_scenes_truth(vqa):
    scenes = shapes_scenes(NUM_SCENES, seed=1, split="test")
    assert vqa.features == VQA_FEATURES and len(vqa) == len(QUESTION_TYPES) * NUM_SCENES
    for row in vqa.select_columns(["image_id", "question", "answers"]):
        objects = scenes[int(row["image_id"].rsplit("-", 1)[1])].objects
        assert row["answers"] == truth(row["question"], objects), (row["question"], objects)


def test_each_scene_gets_one_question_of_each_type_and_yes_no_is_balanced(vqa):
    per_image = Counter((image_id, kind) for image_id, kind in zip(vqa["image_id"], vqa["question_type"]))
    assert set(per_image.values()) == {1} and len(per_image) == len(QUESTION_TYPES) * NUM_SCENES
    yes_no = [answers[0] for answers, kind in zip(vqa["answers"], vqa["question_type"]) if kind == "yes/no"]
    assert 0.4 < yes_no.count("yes") / len(yes_no) < 0.6
    kinds = vqa["question_type"]
    spatial = Counter(question.split()[0] for question, kind in zip(vqa["question"], kinds) if kind == "spatial")
    assert spatial["Where"] > 0 and spatial["Is"] > 0  # both the position and the relation questions are asked
    assert {"yes/no": "yes/no", "counting": "number"}.items() <= dict(zip(kinds, vqa["answer_type"])).items()


def test_the_questions_are_about_the_caption_splits_images(vqa):
    captions = make_shapes_dataset(NUM_SCENES, seed=1, split="test")
    undecoded = captions.cast_column("image", ImageFeature(decode=False))
    images = dict(zip(undecoded["image_id"], undecoded["image"]))
    raw = vqa.cast_column("image", ImageFeature(decode=False))
    for image_id, image in zip(raw["image_id"], raw["image"]):
        assert image["bytes"] == images[image_id]["bytes"]


def test_the_same_arguments_give_the_same_questions():
    assert make_shapes_vqa(10, seed=4)["question"] == make_shapes_vqa(10, seed=4)["question"]
    assert make_shapes_vqa(10, seed=4)["question"] != make_shapes_vqa(10, seed=5)["question"]


@pytest.fixture(scope="module")
def pope():
    return make_shapes_pope(60, seed=2, split="test", statistics_images=400)


def test_pope_asks_about_each_present_object_and_as_many_absent_ones(pope):
    scenes = shapes_scenes(60, seed=2, split="test")
    assert pope.features == POPE_FEATURES
    rows = pope.select_columns(["image_id", "question", "answer", "split"])
    for split in ("random", "popular", "adversarial"):
        answers = [row["answer"] for row in rows if row["split"] == split]
        assert answers.count("yes") == answers.count("no")  # balanced, as POPE is
    for row in rows:
        present = {object_name(o) for o in scenes[int(row["image_id"].rsplit("-", 1)[1])].objects}
        asked = re.fullmatch(r"Is there a (\w+ \w+) in the image\?", row["question"])[1]
        assert (asked in present) == (row["answer"] == "yes")


def test_popular_and_adversarial_negatives_follow_the_training_statistics(pope):
    counts, pairs = object_statistics(shapes_scenes(400, seed=2, split="train"))
    scenes = shapes_scenes(60, seed=2, split="test")
    negatives = {}
    for row in pope.select_columns(["image_id", "question", "answer", "split"]):
        if row["answer"] == "no":
            negatives.setdefault((row["image_id"], row["split"]), []).append(" ".join(row["question"].split()[3:5]))
    for (image_id, split), asked in negatives.items():
        present = {object_name(o) for o in scenes[int(image_id.rsplit("-", 1)[1])].objects}
        absent = [name for name in ALL_OBJECTS if name not in present]
        if split == "popular":  # no absent object is more frequent than an asked one
            assert min(counts[name] for name in asked) >= max(counts[name] for name in absent if name not in asked)
        if split == "adversarial":
            together = {n: sum(pairs[tuple(sorted((n, p)))] for p in present) for n in absent}
            assert min(together[name] for name in asked) >= max(together[n] for n in absent if n not in asked)
    random_negatives = [tuple(v) for (_, split), v in negatives.items() if split == "random"]
    assert len(set(random_negatives)) > len(random_negatives) // 2  # drawn, not fixed


def test_the_training_conversations_ask_every_question_once_each_turn_about_another_scene():
    prompt = "Answer the question using a single word or phrase."
    conversations = make_shapes_conversations(20, prompt, seed=3, split="train", turns=3)
    assert conversations.features == CONVERSATION_FEATURES
    scenes = shapes_scenes(20, seed=3, split="train")
    scene_of = {scene.png: index for index, scene in enumerate(scenes)}
    asked = Counter()
    raw = conversations.cast_column("images", List(ImageFeature(decode=False)))
    for row in raw:
        check_conversation(row["id"], row["messages"], len(row["images"]))
        indices = [scene_of[image["bytes"]] for image in row["images"]]
        assert 1 <= len(indices) <= 3 and len(set(indices)) == len(indices)  # no two questions about one scene
        for index, user, assistant in zip(indices, row["messages"][::2], row["messages"][1::2]):
            assert user["content"][0]["type"] == "image"
            question, suffix = user["content"][1]["text"].split("\n")
            assert suffix == prompt
            expected = Counter(truth(question, scenes[index].objects)).most_common(1)[0][0]
            assert assistant["content"][0]["text"] == expected
            asked[index, question] += 1
    assert len(asked) == len(QUESTION_TYPES) * 20 and set(asked.values()) == {1}
