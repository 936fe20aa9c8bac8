# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""The processor of BLIP-2's stage 1: the vision tower's image processor and the BERT tokenizer (with `[DEC]`)."""

from transformers import ProcessorMixin

from processing_vlm import IS_TRANSFORMERS_4


DECODER_TOKEN = "[DEC]"


class QFormerPretrainingProcessor(ProcessorMixin):
    r"""
    Prepares image-text pairs for [`QFormerForPretraining`]: images become `pixel_values`, captions `input_ids` and
    `attention_mask` (`[CLS] caption [SEP]`, padded to the longest, cut to `max_length` tokens).

    Args:
        image_processor ([`BaseImageProcessor`]): the vision tower's image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the BERT tokenizer, with the `[DEC]` token of the generation
            objective among its special tokens.
    """

    attributes = ["image_processor", "tokenizer"]
    if IS_TRANSFORMERS_4:  # 5.x finds the sub-processors from the __init__ arguments
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)
        if DECODER_TOKEN not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no {DECODER_TOKEN!r} token; add it with "
                f"`tokenizer.add_special_tokens({{'bos_token': {DECODER_TOKEN!r}}})` (and size the embeddings to it)."
            )

    def __call__(self, images=None, text: list[str] | None = None, max_length: int = 64, **kwargs) -> dict:
        """`pixel_values` of `images` and/or the tokenized `text` (`input_ids`, `attention_mask`)."""
        batch = {}
        if images is not None:
            batch.update(self.image_processor(images, return_tensors="pt"))
        if text is not None:
            tokens = self.tokenizer(
                text, padding=True, truncation=True, max_length=max_length, return_token_type_ids=False,
                return_tensors="pt",
            )  # fmt: skip
            batch.update(tokens)
        return batch

    @property
    def decoder_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(DECODER_TOKEN)
