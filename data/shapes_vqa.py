# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Questions about the synthetic shapes scenes, answered from each scene's ground truth, so that question answering and
hallucination are trained and scored offline. The question types are those seed 001 names as where models fail:

- `yes/no`: "Is there a red circle in the image?" (the object present or not, half and half);
- `counting`: "How many shapes are there in the image?";
- `color`: "What color is the star?"; `shape`: "What shape is the blue object?";
- `spatial`: "Where is the red circle?" (left, right, top, bottom, centre) or, with two shapes, "Is the red circle to
  the left of the blue star?" / "... above ...".

[`make_shapes_vqa`] gives a VQAv2-like evaluation set (ten human answers per question), [`make_shapes_pope`] POPE's
object-existence questions with random, popular and adversarial negatives (the objects, a colour and a shape, counted
over the training scenes), and [`make_shapes_conversations`] the questions of each training scene as one multi-turn
conversation, the way LLaVA-1.5's mixture holds VQAv2. Each scene is the image of the caption split of the same
`(split, seed)`, under the same image id.
"""

import random
from collections import Counter
from itertools import combinations

from datasets import Dataset

from .conversations import conversation_dataset, image_part, text_part
from .shapes import SHAPE_COLORS, SHAPE_NAMES, ShapesScene, shapes_image_id, shapes_scenes
from .vqa_benchmarks import POPE_FEATURES, POPE_SPLITS, VQA_FEATURES


QUESTION_TYPES = ("yes/no", "counting", "color", "shape", "spatial")
ANSWER_TYPES = {"yes/no": "yes/no", "counting": "number", "color": "other", "shape": "other", "spatial": "other"}
NUM_HUMAN_ANSWERS = 10
# How annotators would name each position: the centre has three names (VQA's consensus scoring credits each).
POSITION_ANSWERS = {
    "left": ["left"] * 10,
    "right": ["right"] * 10,
    "top": ["top"] * 10,
    "bottom": ["bottom"] * 10,
    "centre": ["centre"] * 4 + ["center"] * 3 + ["middle"] * 3,
}
POSITION_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
RELATIONS = {("left", "right"): "to the left of", ("right", "left"): "to the right of", ("top", "bottom"): "above",
             ("bottom", "top"): "below"}  # fmt: skip
POPE_QUESTION = "Is there a {} in the image?"


def object_name(obj: dict[str, str]) -> str:
    """`"red circle"`: an object as the questions name it (and as POPE counts it)."""
    return f"{obj['color']} {obj['shape']}"


ALL_OBJECTS = tuple(f"{color} {shape}" for color in SHAPE_COLORS for shape in SHAPE_NAMES)


def _the(obj: dict[str, str], objects: list[dict[str, str]], key: str) -> str:
    """How to point at `obj` by its `key` word: "the star", or with its position when the word is not unique."""
    unique = sum(other[key] == obj[key] for other in objects) == 1
    noun = obj[key] if key == "shape" else f"{obj[key]} object"
    return f"the {noun}" if unique else f"the {noun} {POSITION_PHRASE[obj['position']]}"


def scene_questions(scene: ShapesScene, rng: random.Random) -> list[tuple[str, list[str], str]]:
    """One question of each of [`QUESTION_TYPES`] about `scene`: `(question, ten human answers, question type)`."""
    objects = scene.objects
    present = {object_name(obj) for obj in objects}
    if rng.random() < 0.5:
        asked, answer = object_name(rng.choice(objects)), "yes"
    else:
        asked, answer = rng.choice(sorted(set(ALL_OBJECTS) - present)), "no"
    questions = [(POPE_QUESTION.format(asked), [answer] * NUM_HUMAN_ANSWERS, "yes/no")]
    questions.append(("How many shapes are there in the image?", [str(len(objects))] * NUM_HUMAN_ANSWERS, "counting"))
    obj = rng.choice(objects)
    questions.append((f"What color is {_the(obj, objects, 'shape')}?", [obj["color"]] * NUM_HUMAN_ANSWERS, "color"))
    obj = rng.choice(objects)
    questions.append((f"What shape is {_the(obj, objects, 'color')}?", [obj["shape"]] * NUM_HUMAN_ANSWERS, "shape"))
    questions.append(_spatial_question(objects, rng))
    return questions


def _spatial_question(objects: list[dict[str, str]], rng: random.Random) -> tuple[str, list[str], str]:
    """ "Where is X?", or with two shapes half of the time whether one is left of / above the other."""
    if len(objects) == 2 and object_name(objects[0]) == object_name(objects[1]):  # twins: ask by position
        pair = tuple(sorted(obj["position"] for obj in objects))
        position = rng.choice([*pair, *(p for p in POSITION_PHRASE if p not in pair)])
        question = f"Is there a {object_name(objects[0])} {POSITION_PHRASE[position]}?"
        return question, ["yes" if position in pair else "no"] * NUM_HUMAN_ANSWERS, "spatial"
    if len(objects) == 1 or rng.random() < 0.5:
        obj = rng.choice(objects)
        return f"Where is the {object_name(obj)}?", POSITION_ANSWERS[obj["position"]], "spatial"
    first, second = rng.sample(objects, 2)
    truth = (first["position"], second["position"])
    asked = truth if rng.random() < 0.5 else truth[::-1]
    answer = "yes" if asked == truth else "no"
    question = f"Is the {object_name(first)} {RELATIONS[asked]} the {object_name(second)}?"
    return question, [answer] * NUM_HUMAN_ANSWERS, "spatial"


def _question_rng(kind: str, split: str, seed: int) -> random.Random:
    # String seeds are hashed with SHA-512 by `random.Random`: the questions are the same on every platform.
    return random.Random(f"shapes-{kind}/{split}/{seed}")


def make_shapes_vqa(
    num_images: int, seed: int = 0, split: str = "test", image_size: int = 64, shape_scale: float = 1.0
) -> Dataset:
    """
    The questions of [`scene_questions`] about the first `num_images` scenes of `split` (drawn with `image_size` and
    `shape_scale`), as a dataset of `VQA_FEATURES` (question ids `"<image id>-q<k>"`).
    """
    rng = _question_rng("vqa", split, seed)
    rows = []
    for index, scene in enumerate(shapes_scenes(num_images, seed, image_size, split, shape_scale)):
        image_id = shapes_image_id(split, index)
        for k, (question, answers, question_type) in enumerate(scene_questions(scene, rng)):
            rows.append({
                "question_id": f"{image_id}-q{k}", "image_id": image_id, "image": {"bytes": scene.png, "path": None},
                "question": question, "answers": answers, "question_type": question_type,
                "answer_type": ANSWER_TYPES[question_type],
            })  # fmt: skip
    return Dataset.from_list(rows, features=VQA_FEATURES)


def make_shapes_conversations(
    num_images: int,
    answer_prompt: str,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    turns: int = 3,
    shape_scale: float = 1.0,
) -> Dataset:
    """
    The [`scene_questions`] of the first `num_images` scenes of `split` as multi-turn, multi-image conversations
    (`CONVERSATION_FEATURES`): the questions of all scenes shuffled and dealt `turns` to a conversation, each turn a
    scene's image and one question about it, followed by `answer_prompt` on a line of its own (LLaVA-1.5's short-answer
    suffix), answered by the most common human answer. Questions about one scene never share a conversation: one
    would give another's answer away (and a model would learn to read it off the text instead of the image).
    """
    rng = _question_rng("conversations", split, seed)
    scenes = shapes_scenes(num_images, seed, image_size, split, shape_scale)
    questions = [scene_questions(scene, rng) for scene in scenes]
    for scene_questions_ in questions:
        rng.shuffle(scene_questions_)
    rows = []
    # Round k deals every scene's k-th question: within a round each scene appears once.
    for round_ in range(len(QUESTION_TYPES)):
        order = list(range(len(scenes)))
        rng.shuffle(order)
        for start in range(0, len(order), turns):
            group = order[start : start + turns]
            messages = []
            for index in group:
                question, answers, _ = questions[index][round_]
                messages.append({"role": "user", "content": [image_part(), text_part(f"{question}\n{answer_prompt}")]})
                messages.append({"role": "assistant", "content": [text_part(Counter(answers).most_common(1)[0][0])]})
            images = [{"bytes": scenes[index].png, "path": None} for index in group]
            rows.append((f"shapes-qa-{split}-{len(rows):05d}", images, messages))
    return conversation_dataset(rows)


def object_statistics(scenes: list[ShapesScene]) -> tuple[Counter, Counter]:
    """How often each object appears in `scenes`, and each unordered pair of distinct objects together."""
    counts, pairs = Counter(), Counter()
    for scene in scenes:
        names = sorted({object_name(obj) for obj in scene.objects})
        counts.update(names)
        pairs.update(combinations(names, 2))
    return counts, pairs


def pope_negatives(
    present: set[str], number: int, split: str, statistics: tuple[Counter, Counter], rng: random.Random
) -> list[str]:
    """
    `number` objects absent from the scene, as POPE draws them: `random` uniformly; `popular` the most frequent over the
    training scenes; `adversarial` those that co-occur most with the present ones (ties: more frequent, then name).
    """
    absent = sorted(set(ALL_OBJECTS) - present)
    if split == "random":
        return rng.sample(absent, number)
    counts, pairs = statistics
    if split == "popular":
        return sorted(absent, key=lambda name: (-counts[name], name))[:number]
    together = {name: sum(pairs[tuple(sorted((name, other)))] for other in present) for name in absent}
    return sorted(absent, key=lambda name: (-together[name], -counts[name], name))[:number]


def make_shapes_pope(
    num_images: int,
    seed: int = 0,
    split: str = "test",
    statistics_images: int = 1000,
    image_size: int = 64,
    pope_splits: tuple[str, ...] = POPE_SPLITS,
    shape_scale: float = 1.0,
) -> Dataset:
    """
    POPE on the first `num_images` scenes of `split` (`POPE_FEATURES`): per scene and POPE split, "Is there a <object>
    in the image?" for each object present ("yes") and as many absent ones ("no", see [`pope_negatives`]); the
    popular and adversarial negatives come from the first `statistics_images` training scenes.
    """
    statistics = object_statistics(shapes_scenes(statistics_images, seed, image_size, "train", shape_scale))
    rng = _question_rng("pope", split, seed)
    rows = []
    for index, scene in enumerate(shapes_scenes(num_images, seed, image_size, split, shape_scale)):
        image_id, image = shapes_image_id(split, index), {"bytes": scene.png, "path": None}
        present = sorted({object_name(obj) for obj in scene.objects})
        for pope_split in pope_splits:
            negatives = pope_negatives(set(present), len(present), pope_split, statistics, rng)
            asked = [(name, "yes") for name in present] + [(name, "no") for name in negatives]
            for k, (name, answer) in enumerate(asked):
                rows.append({
                    "question_id": f"{image_id}-{pope_split}-{k}", "image_id": image_id, "image": image,
                    "question": POPE_QUESTION.format(name), "answer": answer, "split": pope_split,
                })  # fmt: skip
    return Dataset.from_list(rows, features=POPE_FEATURES)
