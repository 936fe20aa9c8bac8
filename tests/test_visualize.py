"""
`visualize`: projector attention maps and gradient saliency are distributions over the patch grid; the pictures have
titles, labels, separated tiles and a colour bar, and the gallery a heading, scores and marked empty captions.
"""

import numpy as np
import PIL.Image
import PIL.ImageFont
import pytest
import torch

from data.captions import make_shapes_dataset
from evaluation.visualize import (
    ATTENTION_TILE,
    BACKGROUND,
    COLOUR_BAR_AREA,
    COLOUR_BAR_WIDTH,
    CONTACT_SHEET_COLUMN_WIDTH,
    CONTACT_SHEET_HEADER_HEIGHT,
    CONTACT_SHEET_MAX_LINES,
    CONTACT_SHEET_ROW_HEIGHT,
    CONTACT_SHEET_THUMBNAIL,
    ELLIPSIS,
    EMPTY_CAPTION,
    FONT_SIZE,
    GAP,
    HEATMAP_ALPHA,
    HEATMAP_COLOURS,
    LINE_HEIGHT,
    MARGIN,
    ROW_LABEL_WIDTH,
    SALIENCY_CAPTION_LINES,
    SALIENCY_SIZE,
    SHEET_TOP,
    TITLE_LINE_HEIGHT,
    _fit_lines,
    _fit_tail,
    save_attention_grid,
    save_saliency_map,
    write_gallery,
)


@pytest.fixture(scope="module")
def image():
    return make_shapes_dataset(num_images=1, split="test")[0]["image"].convert("RGB")


def pixels(path) -> np.ndarray:
    with PIL.Image.open(path) as picture:
        return np.asarray(picture.convert("RGB")).astype(int)


def has_text(region: np.ndarray) -> bool:
    return bool((region != BACKGROUND).any())


def test_attention_grid_layout(tmp_path):
    # Two rows (a layer, the mean) of three maps over a 4x4 grid, each all on one patch: probability 1 there.
    maps = torch.zeros(2, 3, 4, 4)
    for row in range(2):
        for column in range(3):
            maps[row, column, row, column] = 1.0
    grey = PIL.Image.new("RGB", (32, 32), (128, 128, 128))
    path = tmp_path / "grid.png"
    save_attention_grid(grey, maps, str(path), ("title", "explanation"), ["layer 1", "mean"], ["q0", "q1", "q2"])
    sheet, tile, pitch = pixels(path), ATTENTION_TILE, ATTENTION_TILE + GAP
    left, columns = MARGIN + ROW_LABEL_WIDTH, 1 + 3  # the image, then the maps
    assert sheet.shape == (SHEET_TOP + 2 * pitch + MARGIN, left + columns * pitch + COLOUR_BAR_AREA, 3)
    grid = sheet[SHEET_TOP : SHEET_TOP + 2 * pitch - GAP, left : left + columns * pitch]
    for column in range(columns):  # the pixel columns after each tile, and the rows between the two rows of tiles
        assert (grid[:, column * pitch + tile : (column + 1) * pitch] == BACKGROUND).all()
    assert (grid[tile:pitch] == BACKGROUND).all()
    # Tiles: the image itself, then the grey image under the heat colours; a patch of a map's top corner is
    # brightest (probability 1) where the map is 1, darkest elsewhere.
    assert (grid[:tile, :tile] == 128).all() and (grid[pitch:, :tile] == BACKGROUND).all()
    patch = tile // 4
    brightest, darkest = (np.array(HEATMAP_COLOURS[key]) * HEATMAP_ALPHA + 128 * (1 - HEATMAP_ALPHA) for key in
                          ("white", "black"))  # fmt: skip
    for row in range(2):
        for column in range(3):
            cell = grid[row * pitch : row * pitch + tile, (1 + column) * pitch : (1 + column) * pitch + tile]
            np.testing.assert_allclose(cell[row * patch + patch // 2, column * patch + patch // 2], brightest, atol=1)
            np.testing.assert_allclose(cell[3 * patch + 1, 3 * patch + 1], darkest, atol=1)
    # The colour bar runs from the brightest colour (probability 1, top) to the darkest (0, bottom).
    bar = sheet[SHEET_TOP : SHEET_TOP + 2 * pitch - GAP, left + columns * pitch]
    assert tuple(bar[0]) == HEATMAP_COLOURS["white"] and tuple(bar[-1]) == HEATMAP_COLOURS["black"]
    # Text: both title lines, a label above every column and left of every row, the bar's ticks and name.
    assert has_text(sheet[MARGIN : MARGIN + TITLE_LINE_HEIGHT])
    assert has_text(sheet[MARGIN + TITLE_LINE_HEIGHT : SHEET_TOP - LINE_HEIGHT])
    for x in range(left, left + columns * pitch, pitch):
        assert has_text(sheet[SHEET_TOP - LINE_HEIGHT : SHEET_TOP, x : x + tile])
    for row in range(2):
        assert has_text(sheet[SHEET_TOP + row * pitch : SHEET_TOP + row * pitch + tile, MARGIN:left])
    assert has_text(sheet[SHEET_TOP : SHEET_TOP + 2 * pitch, left + columns * pitch + COLOUR_BAR_WIDTH + GAP :])
    with pytest.raises(ValueError, match="^2 x 2 labels for \\(2, 3\\) maps.$"):
        save_attention_grid(grey, maps, str(path), ("title", "explanation"), ["layer 1", "mean"], ["q0", "q1"])


@pytest.mark.parametrize(("caption", "lines_used"), [("a red circle.", 1), ("", 1), ("a long caption. " * 40, 4)])
def test_saliency_picture_puts_the_caption_under_the_image(caption, lines_used, image, tmp_path):
    path = tmp_path / "saliency.png"
    save_saliency_map(image, torch.full((4, 4), 1 / 16), caption, str(path), "mlp projector · image 0 · tiny:mlp")
    sheet = pixels(path)
    assert sheet.shape == (
        SHEET_TOP + SALIENCY_SIZE + GAP + SALIENCY_CAPTION_LINES * LINE_HEIGHT + MARGIN,
        MARGIN + 2 * (SALIENCY_SIZE + GAP) + COLOUR_BAR_AREA,
        3,
    )
    footer_top = SHEET_TOP + SALIENCY_SIZE + GAP
    used = [has_text(sheet[footer_top + i * LINE_HEIGHT : footer_top + (i + 1) * LINE_HEIGHT]) for i in range(4)]
    assert used == [True] * lines_used + [False] * (4 - lines_used)
    bar = sheet[SHEET_TOP : SHEET_TOP + SALIENCY_SIZE, MARGIN + 2 * (SALIENCY_SIZE + GAP)]
    assert (bar[0] != bar[-1]).any()


def test_text_is_wrapped_broken_and_cut_with_an_ellipsis():
    font = PIL.ImageFont.load_default(size=FONT_SIZE)
    assert _fit_lines("a red   circle.", font, 200, 3) == ["a red circle."]
    assert _fit_lines("   ", font, 200, 3) == []
    lines = _fit_lines("word " * 60, font, 100, 3)
    assert len(lines) == 3 and lines[-1].endswith(ELLIPSIS) and all(font.getlength(line) <= 100 for line in lines)
    broken = _fit_lines("x" * 100, font, 50, 30)
    assert "".join(broken) == "x" * 100 and all(0 < font.getlength(line) <= 50 for line in broken)
    path = "/data/checkpoints/run-42/stage2/vlm-perceiver-final"
    assert _fit_tail(path, font, 1000) == path
    short = _fit_tail(path, font, 120)
    assert short.startswith(ELLIPSIS) and path.endswith(short[1:]) and font.getlength(short) <= 120
    assert len(short) > len(_fit_tail(path, font, 100))


def test_gallery_has_a_heading_scores_and_marks_empty_captions(image, tmp_path):
    long_word = "averyveryverylongwordwithoutanyspaceatall" * 3
    captions = {"user/vlm-mlp": ["", long_word], "tiny:qformer": ["a red circle.", "   "]}
    metrics = {"user/vlm-mlp": {"CIDEr": 1.03125, "METEOR": 0.2712, "BLEU-4": 0.3401, "ROUGE-L": 0.5601},
               "tiny:qformer": {"CIDEr": 0.0, "METEOR": 0.1, "BLEU-4": 0.0}}  # fmt: skip
    references = [["ref a."], ["ref b."]]
    write_gallery(str(tmp_path), ["a", "b"], [image, image], references, captions, "shapes, test", metrics)
    gallery = (tmp_path / "gallery.html").read_text()
    assert "<h1>Caption gallery</h1><p>shapes, test</p>" in gallery
    assert "<li>user/vlm-mlp: CIDEr 1.0312 · METEOR 0.2712 · BLEU-4 0.3401 · ROUGE-L 0.5601</li>" in gallery
    assert "<li>tiny:qformer: CIDEr 0.0000 · METEOR 0.1000 · BLEU-4 0.0000 · ROUGE-L n/a</li>" in gallery
    assert gallery.count(f"<td class='empty'>{EMPTY_CAPTION}</td>") == 2 and "overflow-wrap:anywhere" in gallery
    assert f"<td>{long_word}</td>" in gallery

    sheet = pixels(tmp_path / "contact_sheet.png")
    table_top = MARGIN + TITLE_LINE_HEIGHT + 3 * LINE_HEIGHT + GAP + CONTACT_SHEET_HEADER_HEIGHT
    assert sheet.shape == (
        table_top + 2 * CONTACT_SHEET_ROW_HEIGHT + MARGIN,
        3 * MARGIN + CONTACT_SHEET_THUMBNAIL + 3 * CONTACT_SHEET_COLUMN_WIDTH,
        3,
    )

    def cell_lines(row: int, column: int) -> list[bool]:
        """Which caption lines of a cell hold text."""
        top = table_top + row * CONTACT_SHEET_ROW_HEIGHT + GAP
        x = 2 * MARGIN + CONTACT_SHEET_THUMBNAIL + column * CONTACT_SHEET_COLUMN_WIDTH
        cell = sheet[top : top + CONTACT_SHEET_MAX_LINES * LINE_HEIGHT, x : x + CONTACT_SHEET_COLUMN_WIDTH - MARGIN]
        return [has_text(cell[i * LINE_HEIGHT : (i + 1) * LINE_HEIGHT]) for i in range(CONTACT_SHEET_MAX_LINES)]

    one_line = [True] + [False] * (CONTACT_SHEET_MAX_LINES - 1)
    assert cell_lines(0, 1) == cell_lines(1, 2) == one_line  # "(empty)"
    assert cell_lines(1, 1) == [True] * 4 + [False] * (CONTACT_SHEET_MAX_LINES - 4)  # the long word, broken
