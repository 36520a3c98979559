"""A bar chart of similarity scores as an RGB image, so the scores can be seen on the node."""
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BAR_COLOUR = (66, 120, 196)
MISSING_COLOUR = (214, 64, 64)  # outline and note of a score that could not be measured
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (32, 32, 32)
GRID_COLOUR = (200, 200, 200)

BAR_WIDTH, BAR_GAP, GROUP_GAP = 48, 10, 28
PLOT_HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 40, 52  # margins: axis labels, title, bar and group labels


@dataclass
class Bar:
    label: str
    value: float | None  # None: not measured; drawn as an outlined slot with the note instead of a bar
    note: str = "none"


def _axis_bottom(values: list[float]) -> float:
    """0, or the tenth below the lowest score when one is negative (a cosine can be): bars start at 0."""
    lowest = min(values, default=0.0)
    return 0.0 if lowest >= 0 else max(-1.0, np.floor(lowest * 10) / 10)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple, font, align: str) -> None:
    """``text`` placed by hand at ``xy`` (``align``: horizontal l/m/r then vertical t/m/b), since Pillow before 10.1
    has a bitmap default font that takes no anchor."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[align[0]]
    y = xy[1] - {"t": top, "m": (top + bottom) / 2, "b": bottom}[align[1]]
    draw.text((x, y), text, fill=fill, font=font)


def bar_chart(title: str, groups: Sequence[tuple[str, Sequence[Bar]]]) -> np.ndarray:
    """``uint8 [H, W, 3]``: a bar per score on a fixed axis up to 1, its value above it, bars grouped under a
    group label (an empty label draws none)."""
    font = ImageFont.load_default()
    values = [bar.value for _, bars in groups for bar in bars if bar.value is not None]
    bottom = _axis_bottom(values)
    group_widths = [len(bars) * BAR_WIDTH + (len(bars) - 1) * BAR_GAP for _, bars in groups]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(LEFT + sum(group_widths) + GROUP_GAP * (len(groups) - 1) + RIGHT,
                LEFT + int(probe.textlength(title, font=font)) + RIGHT)
    image = Image.new("RGB", (width, TOP + PLOT_HEIGHT + BOTTOM), BACKGROUND)
    draw = ImageDraw.Draw(image)

    def y_of(value: float) -> float:
        return TOP + (1.0 - value) / (1.0 - bottom) * PLOT_HEIGHT

    _text(draw, (LEFT, 8), title, TEXT_COLOUR, font, "lt")
    for tick in sorted({bottom, 0.0, 0.5, 1.0}):
        y = y_of(tick)
        draw.line([(LEFT - 4, y), (width - RIGHT, y)], fill=GRID_COLOUR)
        _text(draw, (LEFT - 6, y), f"{tick:g}", TEXT_COLOUR, font, "rm")
    x = LEFT
    for (group_label, bars), group_width in zip(groups, group_widths):
        for bar in bars:
            centre = x + BAR_WIDTH / 2
            if bar.value is None:
                draw.rectangle([x, y_of(1.0), x + BAR_WIDTH - 1, y_of(bottom)], outline=MISSING_COLOUR, width=2)
                _text(draw, (centre, y_of((1.0 + bottom) / 2)), bar.note, MISSING_COLOUR, font, "mm")
            else:
                top, base = sorted((y_of(bar.value), y_of(0.0)))
                draw.rectangle([x, top, x + BAR_WIDTH - 1, base], fill=BAR_COLOUR)
                label_at = (centre, top - 2) if bar.value >= 0 else (centre, base + 2)  # off the bar's far end
                _text(draw, label_at, f"{bar.value:.3f}", TEXT_COLOUR, font, "mb" if bar.value >= 0 else "mt")
            _text(draw, (centre, TOP + PLOT_HEIGHT + 6), bar.label, TEXT_COLOUR, font, "mt")
            x += BAR_WIDTH + BAR_GAP
        if group_label:
            _text(draw, (x - BAR_GAP - group_width / 2, TOP + PLOT_HEIGHT + 26), group_label, TEXT_COLOUR, font,
                  "mt")
        x += GROUP_GAP - BAR_GAP
    return np.array(image)
