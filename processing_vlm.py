# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""VLM processor: an image processor (SigLIP's by default) and a tokenizer (Qwen2's by default) in one object."""

import json
import os
import sys

import torch
import transformers
from transformers import BatchFeature, ProcessorMixin
from transformers.image_transforms import to_pil_image
from transformers.image_utils import PIL, is_pil_image, load_image  # Pillow as transformers' vision extra imports it


try:
    from .configuration_vlm import SEQUENCE_FUSIONS
    from .tiling_vlm import cut_into_tiles, pad_tiles, tile_tags
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import SEQUENCE_FUSIONS
    from tiling_vlm import cut_into_tiles, pad_tiles, tile_tags


IS_TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5
IGNORE_INDEX = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"


def make_chat_template(image_token: str = "<image>", mark_answers: bool = False) -> str:
    """
    Qwen2.5's ChatML template, where an `{"type": "image"}` content part becomes `image_token`. With `mark_answers`,
    each assistant answer and its end-of-turn token are wrapped in `{% generation %}` markers (the same text), so that
    `return_assistant_tokens_mask=True` tells which tokens a model trains on.
    """
    content = (
        "{%- if message['content'] is string %}{{- message['content'] }}"
        "{%- else %}{%- for part in message['content'] %}"
        f"{{%- if part['type'] == 'image' %}}{{{{- '{image_token}' }}}}"
        "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
        "{%- endfor %}{%- endif %}"
    )
    turn = content + "{{- '<|im_end|>\\n' }}"
    if mark_answers:
        answer = "{%- generation %}" + content + "{{- '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
        turn = "{%- if message['role'] == 'assistant' %}" + answer + "{%- else %}" + turn + "{%- endif %}"
    return (
        "{%- for message in messages %}"
        "{%- if loop.first and message['role'] != 'system' %}"
        "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
        "{%- endif %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' }}"
        + turn
        + "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


SIXTEEN_BIT_BYTE_ORDERS = {"I;16": "little", "I;16L": "little", "I;16B": "big", "I;16N": sys.byteorder}
SIXTEEN_BIT_MODES = tuple(SIXTEEN_BIT_BYTE_ORDERS)


def to_rgb_image(image, input_data_format: str | None = None):
    """
    Turns a path or URL, a PIL image of any mode (L, RGBA, P, CMYK, I;16, F, ...), or an array / tensor of shape
    `(H, W)`, `(H, W, C)` or `(C, H, W)` with 1, 3 or 4 channels into an RGB PIL image. Transparent pixels are
    composited on white. Where an array's channels are, `input_data_format` says (`"channels_first"` or
    `"channels_last"`, transformers' `ChannelDimension`); without it, see [`channels_are_last`].

    Pixel values are brought to 0-255 by one rule, whatever the input (a PIL image counts as the array
    `numpy.asarray(image)`: 16-bit modes are uint16, mode I int32, mode F float32):

    - uint8: as is;
    - uint16: scaled from 0-65535;
    - other integers: as is when all are at most 255, else scaled from 0-65535;
    - floats: scaled from 0-1 when all are in [0, 1], else taken as 0-255;

    then rounded. Values outside those ranges (negative ones, as normalised pixels have, or floats above 255 and
    integers above 65535) raise a `ValueError`: they are not pixels this rule can read.
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            image = _open_image_file(image) if os.path.isfile(image) else load_image(str(image))
            image.load()
        except Exception as error:
            raise ValueError(
                f"Could not read the image {str(image)!r} ({type(error).__name__}: {error}). Pass a path or URL of a "
                "readable image file, a PIL.Image, a numpy array or a torch tensor."
            ) from error
    if is_pil_image(image) and image.mode in ("I", "F", *SIXTEEN_BIT_MODES):
        image = _pil_pixels(image)  # PIL's own conversion to 8 bits clips these instead of scaling them
    if not is_pil_image(image):
        array = image if isinstance(image, torch.Tensor) else torch.tensor(image)
        if array.ndim == 2:  # (H, W): grey
            array = array.unsqueeze(-1)
        elif array.ndim != 3:
            raise ValueError(f"An image array must have 2 or 3 dimensions, got shape {tuple(array.shape)}.")
        elif not channels_are_last(tuple(array.shape), input_data_format):
            array = array.permute(1, 2, 0)
        if array.shape[-1] == 4:
            array = array[..., :3]
        if array.shape[-1] not in (1, 3):
            raise ValueError(
                f"An image array needs 1, 3 or 4 channels; shape {tuple(image.shape)} has {array.shape[-1]}."
            )
        image = to_pil_image(_to_uint8(array), input_data_format="channels_last")
    try:
        if "A" in image.getbands() or "transparency" in image.info:
            image = image.convert("RGBA")
            background = image.copy()
            background.paste((255, 255, 255, 255), (0, 0, *image.size))
            background.alpha_composite(image)
            image = background
        return image.convert("RGB")
    except OSError as error:
        raise ValueError(f"Could not decode the image {image!r} ({error}); the file is truncated or corrupt.") from error


def channels_are_last(shape: tuple[int, ...], input_data_format: str | None = None) -> bool:
    """
    Whether an image array of `shape` `(a, b, c)` holds its channels last. `input_data_format` decides when given.
    Otherwise, as transformers' `infer_channel_dimension_format`, the channel axis is the end one of size 1 or 3;
    failing that, the end one of size 4 (RGBA). An array whose both end axes qualify, such as a channels-last image 3
    pixels tall `(3, W, 3)`, is refused: either reading could be meant, and the wrong one gives a wrong image.
    """
    if input_data_format is not None:
        data_format = str(getattr(input_data_format, "value", input_data_format))
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(
                f"input_data_format={input_data_format!r} is invalid; choose 'channels_first' or 'channels_last'."
            )
        return data_format == "channels_last"
    for sizes in ((1, 3), (4,)):
        first, last = shape[0] in sizes, shape[-1] in sizes
        if first and last:
            raise ValueError(
                f"An image array of shape {shape} may hold its channels first or last; say which with "
                "input_data_format='channels_first' or 'channels_last'."
            )
        if first or last:
            return last
    raise ValueError(f"An image array of shape {shape} has no channel axis of 1, 3 or 4 at either end.")


def _open_image_file(path: str | os.PathLike):
    """The image of a local file in its own mode (EXIF orientation applied): `load_image` would clip 16-bit ones."""
    image = PIL.Image.open(path)
    image.load()
    return PIL.ImageOps.exif_transpose(image)


def _pil_pixels(image) -> torch.Tensor:
    """
    The pixels `(H, W)` of a single-channel 16-bit (uint16), 32-bit integer (mode I, int32) or float (mode F, float32)
    PIL image.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        # Read from the raw bytes in the mode's byte order: Pillow < 13 clips I;16N to 255 in `convert("I")`.
        raw = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 2)
        low, high = raw.to(torch.int32).unbind(-1)
        if SIXTEEN_BIT_BYTE_ORDERS[image.mode] == "big":
            low, high = high, low
        return (low + 256 * high).to(torch.uint16)
    dtype = torch.float32 if image.mode == "F" else torch.int32
    return torch.frombuffer(bytearray(image.tobytes()), dtype=dtype).view(image.height, image.width)


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """`pixels` of any dtype as uint8, by the rule of [`to_rgb_image`]."""
    if pixels.dtype == torch.uint8:
        return pixels
    is_float, is_16_bit = pixels.is_floating_point(), pixels.dtype == torch.uint16
    pixels = pixels.float()  # exact for integers up to 2**24; uint16 tensors support few operations
    low, high = float(pixels.min()), float(pixels.max())
    if not torch.isfinite(pixels).all():
        raise ValueError("The image has NaN or infinite values; pass finite pixels in [0, 1] or [0, 255].")
    if low < 0 or high > (255 if is_float else 65535):
        expected = "[0, 1] or [0, 255]" if is_float else "[0, 255] or [0, 65535]"
        raise ValueError(
            f"Image values lie in [{low:g}, {high:g}]; {'float' if is_float else 'integer'} pixels must lie in "
            f"{expected}. Pass the image's raw pixels, not normalised ones: the image processor normalises them."
        )
    if is_float and high <= 1:
        pixels = pixels * 255
    elif not is_float and (is_16_bit or high > 255):
        pixels = pixels / 257  # 65535 -> 255
    return pixels.round().to(torch.uint8)


class VLMProcessor(ProcessorMixin):
    r"""
    Prepares images and text for [`VLMForConditionalGeneration`]: each `image_token` in the text becomes
    `num_image_tokens` placeholder tokens, and the images become `pixel_values`.

    Args:
        image_processor ([`BaseImageProcessor`]):
            The vision tower's image processor (SigLIP: resize to 224x224, rescale by 1/255, normalise to [-1, 1]).
        tokenizer ([`PreTrainedTokenizerBase`]):
            The language model's tokenizer, with `image_token` among its special tokens.
        chat_template (`str`, *optional*):
            Jinja chat template; [`make_chat_template`] gives Qwen2.5's with image content parts.
        num_image_tokens (`int`, *optional*, defaults to 196):
            Placeholders per image; must equal the model's `config.num_image_tokens`.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The image placeholder token.
        max_tiles (`int`, *optional*, defaults to 1):
            Dynamic resolution: each image is cut into up to this many tiles of the tower's input size, plus a
            thumbnail when there is more than one (`tiling_vlm`); must equal the model's `config.max_tiles`. 1 keeps
            the whole image, resized.
        fusion (`str`, *optional*, defaults to `"early"`):
            The model's `config.fusion`. With tiles and early (or visual-expert) fusion, each tile gets its tag and its
            placeholders in the text; with cross-attention fusion an image stays one marker, whose tokens are all its
            tiles'.
    """

    attributes = ["image_processor", "tokenizer"]
    if IS_TRANSFORMERS_4:  # 5.x finds the sub-processors from the __init__ arguments
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"
    valid_kwargs = ["chat_template", "num_image_tokens", "image_token", "max_tiles", "fusion"]

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        num_image_tokens: int = 196,
        image_token: str = "<image>",
        max_tiles: int = 1,
        fusion: str = "early",
        **kwargs,
    ):
        if isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1:
            raise ValueError(f"max_tiles={max_tiles!r} is invalid; it must be a positive integer (1: no tiles).")
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.max_tiles = max_tiles
        self.fusion = fusion
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no {image_token!r} token; add it with "
                f"`tokenizer.add_tokens([{image_token!r}], special_tokens=True)` (and resize the model's embeddings)."
            )
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        padding: bool | str = True,
        return_tensors: str | None = None,
        input_data_format: str | None = None,
        videos=None,
        audio=None,
        audios=None,
        **kwargs,
    ) -> BatchFeature:
        """
        Tokenises `text` (one string or a batch) with every `image_token` expanded to `num_image_tokens` placeholders,
        and preprocesses `images`: one image, a flat list in the order of the image tokens in the batch, or one list
        per text. Returns `input_ids`, `attention_mask` and, with images, `pixel_values` of shape
        `(num_images, 3, height, width)`, or with `max_tiles > 1` of shape `(num_images, max_count, 3, height,
        width)` and `num_tiles` (see [`tile_images`]). Batches of mixed lengths are padded (on the tokenizer's
        `padding_side`).

        Image arrays may hold their channels first or last: `input_data_format` (`"channels_first"` or
        `"channels_last"`) says which where their shape does not (see [`channels_are_last`]).

        `videos` and `audio` (or `audios`, as evaluation harnesses such as lmms-eval name it) may be given only empty
        (`None` or an empty list): this model reads images and text.
        """
        for name, value in (("videos", videos), ("audio", audio), ("audios", audios)):
            if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0):
                raise ValueError(
                    f"VLMProcessor handles images and text only, but `{name}` is not empty; leave `{name}` out or pass "
                    "None or an empty list."
                )
        if text is None:
            raise ValueError("VLMProcessor needs `text`; put one image token per image in it, e.g. via apply_chat_template.")
        texts = [text] if isinstance(text, str) else list(text)
        flat_images = self._flatten_images(images, texts)
        num_tokens = sum(sample.count(self.image_token) for sample in texts)
        if num_tokens != len(flat_images):
            raise ValueError(
                f"The text has {num_tokens} image tokens ({self.image_token!r}) but {len(flat_images)} images were "
                f"given; put one {self.image_token!r} in the text (or one {{'type': 'image'}} part in the chat message) "
                "for each image."
            )
        rgb_images = [to_rgb_image(image, input_data_format) for image in flat_images]
        image_data = {}
        if rgb_images and self.max_tiles > 1:
            image_data = self.tile_images(rgb_images)
        elif rgb_images:
            # RGB images: channels last, which the image processor would not infer of one 1 or 3 pixels tall.
            image_data["pixel_values"] = self.image_processor(
                rgb_images, return_tensors=return_tensors, input_data_format="channels_last"
            )["pixel_values"]
        num_tiles = image_data["num_tiles"].tolist() if "num_tiles" in image_data else None
        expanded = self.expand_texts(texts, num_tiles)
        data = dict(self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data={**data, **image_data}, tensor_type=return_tensors)

    def tile_images(self, images: list) -> dict[str, torch.Tensor]:
        """
        RGB PIL `images` cut into tiles (`tiling_vlm.cut_into_tiles`): `pixel_values` `(num_images, max_count, 3,
        size, size)`, each image's tiles then its thumbnail, zero-padded to the image with the most, and `num_tiles`
        `(num_images,)`, how many of them each image has.
        """
        tile_size = self.image_processor.size["height"]  # the tower's square input
        tiles = [cut_into_tiles(image, tile_size, self.max_tiles, int(self.image_processor.resample)) for image in images]
        num_tiles = torch.tensor([len(per_image) for per_image in tiles])
        flat = [tile for per_image in tiles for tile in per_image]
        pixel_values = torch.as_tensor(
            self.image_processor(flat, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        )
        return {"pixel_values": pad_tiles(pixel_values, num_tiles)[0], "num_tiles": num_tiles}

    def expand_texts(self, texts: list[str], num_tiles: list[int] | None = None) -> list[str]:
        """
        `texts` with every `image_token` expanded ([`expand_image_tokens`]); `num_tiles`, the tiles of each image in
        the order of the image tokens in the batch, gives each image's text ([`tiled_image_text`]).
        """
        if num_tiles is None:
            return [self.expand_image_tokens(sample) for sample in texts]
        counts = iter(num_tiles)
        return ["".join(self._split_at_images(sample, counts)) for sample in texts]

    def _split_at_images(self, text: str, counts) -> list[str]:
        """The pieces of `text`, each image token replaced by its next tile count's tags and placeholders."""
        pieces = text.split(self.image_token)
        expanded = [pieces[0]]
        for piece in pieces[1:]:
            expanded += [self.tiled_image_text(next(counts)), piece]
        return expanded

    def tiled_image_text(self, num_tiles: int) -> str:
        """
        The text of an image of `num_tiles` tiles: with early (or visual-expert) fusion each tile's tag, then its
        placeholders; otherwise the image's own placeholders (hybrid fusion: the thumbnail's; cross-attention: its one
        marker).
        """
        placeholders = self.image_token * self.num_image_tokens
        if self.fusion not in SEQUENCE_FUSIONS:
            return placeholders
        return "".join(tag + placeholders for tag in tile_tags(num_tiles))

    def expand_image_tokens(self, text: str) -> str:
        """`text` with every `image_token` repeated `num_image_tokens` times, the placeholders the model fills."""
        return text.replace(self.image_token, self.image_token * self.num_image_tokens)

    def _flatten_images(self, images, texts: list[str]) -> list:
        if images is None:
            return []
        if not isinstance(images, (list, tuple)):
            return [images]
        if images and all(isinstance(per_text, (list, tuple)) for per_text in images):
            if len(images) != len(texts):
                raise ValueError(f"Got {len(images)} lists of images for {len(texts)} texts; give one list per text.")
            for index, (per_text, sample) in enumerate(zip(images, texts)):
                if len(per_text) != sample.count(self.image_token):
                    raise ValueError(
                        f"Text {index} has {sample.count(self.image_token)} image tokens ({self.image_token!r}) but "
                        f"{len(per_text)} images were given for it."
                    )
            return [image for per_text in images for image in per_text]
        return list(images)

    def build_labels(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """
        Training labels for `input_ids` `(batch, seq)`: the ids of every assistant answer and its end-of-turn token,
        `-100` everywhere else (system and user turns, image placeholders, padding).
        """
        header = self.tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
        end_of_turn = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, ids in enumerate(input_ids.tolist()):
            position = 0
            while position <= len(ids) - len(header):
                if ids[position : position + len(header)] != header:
                    position += 1
                    continue
                start = end = position + len(header)
                while end < len(ids) and ids[end] != end_of_turn:
                    end += 1
                end = min(end + 1, len(ids))  # the end-of-turn token is supervised too: it is what stops generation
                labels[row, start:end] = input_ids[row, start:end]
                position = end
        return labels

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Saves the processor with an `auto_map` so that `AutoProcessor(..., trust_remote_code=True)` finds this class."""
        self.register_for_auto_class()
        saved = super().save_pretrained(save_directory, **kwargs)
        # transformers 5.x writes `extra_special_tokens` as a list, which 4.x cannot read; both read this key.
        tokenizer_config_file = os.path.join(save_directory, "tokenizer_config.json")
        with open(tokenizer_config_file, encoding="utf-8") as file:
            tokenizer_config = json.load(file)
        if isinstance(tokenizer_config.get("extra_special_tokens"), list):
            tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens")
            with open(tokenizer_config_file, "w", encoding="utf-8") as file:
                json.dump(tokenizer_config, file, indent=2, ensure_ascii=False)
        return saved

    @property
    def model_input_names(self) -> list[str]:
        tiles = ["num_tiles"] if self.max_tiles > 1 else []
        return list(dict.fromkeys(self.tokenizer.model_input_names + ["pixel_values", *tiles]))


__all__ = ["VLMProcessor"]
