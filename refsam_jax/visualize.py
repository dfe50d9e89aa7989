"""Overlays of predicted masks on video frames, and GIF / MP4 writers for them.

    overlay = overlay_masks(frame, masks)                   # uint8 [H, W, 3], one colour per expression
    frame = add_captions(overlay, sentences)                # sentences below the frame, in their colours
    with OverlayWriter("out/overlay", fps=10) as writer:   # out/overlay.gif (+ out/overlay.mp4)
        writer.add(frame)
    frame, masks = enlarge(frame, masks, 384)               # small videos: draw at >= 384 px, captions legible
    strip = comparison_strip(frames, truth, predictions, captions)   # ground truth vs prediction, one image

The GIF is a preview: frames are scaled to at most `gif_max_side` pixels and kept (palette-quantised,
one byte per pixel) until the writer closes, because GIF encoders write all frames at once. The MP4 is
written as frames arrive, at full resolution, by the ffmpeg binary of `imageio-ffmpeg`.
"""

import contextlib
import os
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours (RGB) for expressions 0, 1, 2, ...; they repeat after the last one.
COLOURS: Tuple[Tuple[int, int, int], ...] = (
    (255, 64, 64), (48, 200, 72), (64, 128, 255), (255, 200, 0), (200, 72, 255), (0, 210, 210),
    (255, 128, 0), (255, 96, 192), (160, 220, 64), (128, 128, 255),
)


@contextlib.contextmanager
def ffmpeg_subprocess() -> Iterator[None]:
    """Silences JAX's warning about os.fork() while imageio starts ffmpeg: the child only execs ffmpeg."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def colour_of(index: int) -> Tuple[int, int, int]:
    """The overlay colour of expression `index`."""
    return COLOURS[index % len(COLOURS)]


def _boundary(mask: np.ndarray) -> np.ndarray:
    """bool `[H, W]` -> the mask's pixels that have a 4-neighbour outside it."""
    padded = np.pad(mask, 1, mode="constant")
    inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inside


def overlay_masks(frame: np.ndarray, masks: np.ndarray, colours: Optional[Sequence[Tuple[int, int, int]]] = None,
                  alpha: float = 0.5) -> np.ndarray:
    """Tints each mask on the frame in its colour and outlines it.

    Args:
      frame: uint8 `[H, W, 3]`.
      masks: bool `[E, H, W]`, one per expression (later tints and outlines cover earlier ones).
      colours: E RGB colours; default `colour_of(e)`.
      alpha: opacity of the tint.
    Returns:
      uint8 `[H, W, 3]`.
    """
    frame = np.asarray(frame)
    masks = np.asarray(masks, bool)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    if masks.ndim != 3 or masks.shape[1:] != frame.shape[:2]:
        raise ValueError(f"masks must be bool [E, H, W] with (H, W) = {frame.shape[:2]}, got {masks.shape}")
    colours = [colour_of(e) for e in range(len(masks))] if colours is None else list(colours)
    if len(colours) != len(masks):
        raise ValueError(f"{len(colours)} colours for {len(masks)} masks")
    out = frame.astype(np.float32)
    for mask, colour in zip(masks, colours):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    for mask, colour in zip(masks, colours):  # Outlines last, so overlapping masks all stay visible.
        out[_boundary(mask)] = colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font.
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> List[str]:
    """Greedy word wrap of `text` to lines at most `width` pixels wide (long words stay whole)."""
    lines: List[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def add_captions(frame: np.ndarray, captions: Sequence[str],
                 colours: Optional[Sequence[Tuple[int, int, int]]] = None) -> np.ndarray:
    """Appends a black band below the frame with one line (wrapped) per caption, in its colour.

    frame uint8 `[H, W, 3]` -> uint8 `[H + band, W, 3]`; the band's height depends only on the captions
    and the frame size, so every frame of a video gets the same output size.
    """
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    colours = [colour_of(e) for e in range(len(captions))] if colours is None else list(colours)
    font_size = max(10, min(32, height // 20))
    margin = max(2, font_size // 3)
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    blocks = [_wrap(measure, f"{e}: {caption}", font, width - 2 * margin) for e, caption in enumerate(captions)]
    line_height = font_size + margin
    band = margin + line_height * sum(len(lines) for lines in blocks)
    canvas = Image.new("RGB", (width, height + band))
    canvas.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + margin
    for lines, colour in zip(blocks, colours):
        for line in lines:
            draw.text((margin, y), line, fill=tuple(colour), font=font)
            y += line_height
    return np.asarray(canvas)


def enlarge(frame: np.ndarray, masks: np.ndarray, long_side: int) -> Tuple[np.ndarray, np.ndarray]:
    """Scales a small frame up so that its long side is at least `long_side` (bilinear), and its masks with it
    (nearest); larger frames are returned as they are.

    frame uint8 `[H, W, 3]`, masks bool `[E, H, W]` -> the same at `[H', W']`.
    """
    height, width = frame.shape[:2]
    scale = long_side / max(height, width)
    if scale <= 1:
        return frame, masks
    size = (round(width * scale), round(height * scale))
    frame = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
    rows = np.minimum((np.arange(size[1]) + 0.5) / scale, height - 1).astype(int)
    cols = np.minimum((np.arange(size[0]) + 0.5) / scale, width - 1).astype(int)
    return frame, np.asarray(masks, bool)[:, rows][:, :, cols]


def _text_band(lines: Sequence[Tuple[str, Tuple[int, int, int]]], width: int, font_size: int) -> np.ndarray:
    """A black band `[h, width, 3]` with each `(text, colour)` wrapped to the width."""
    margin = max(2, font_size // 3)
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [(line, colour) for text, colour in lines for line in _wrap(measure, text, font, width - 2 * margin)]
    band = Image.new("RGB", (width, margin + (font_size + margin) * len(wrapped)))
    draw = ImageDraw.Draw(band)
    for i, (line, colour) in enumerate(wrapped):
        draw.text((margin, margin + i * (font_size + margin)), line, fill=tuple(colour), font=font)
    return np.asarray(band)


def comparison_strip(frames: np.ndarray, truth: np.ndarray, predictions: np.ndarray, captions: Sequence[str],
                     frame_names: Optional[Sequence[str]] = None, *, max_frames: int = 8,
                     cell_long_side: int = 192) -> np.ndarray:
    """Ground truth against prediction for every expression of a video, as one image to judge at a glance.

    Per expression: its caption, then a row of frames with the ground-truth mask and a row with the predicted
    mask (tinted and outlined in the expression's colour); the columns are up to `max_frames` frames evenly
    spaced over the video, each drawn with its long side `cell_long_side` (masks enlarged before they are
    outlined, so edges stay sharp), named on top.

    Args:
      frames: uint8 `[T, H, W, 3]`.
      truth, predictions: bool `[E, T, H, W]`.
      captions: E strings (e.g. the sentence and its score).
      frame_names: T names (default: the frame indices).
    Returns:
      uint8 `[h, w, 3]`.
    """
    frames, truth, predictions = np.asarray(frames), np.asarray(truth, bool), np.asarray(predictions, bool)
    num_frames = len(frames)
    if truth.shape != predictions.shape or truth.shape[1:] != frames.shape[:3] or len(captions) != len(truth):
        raise ValueError(f"frames {frames.shape}, truth {truth.shape}, predictions {predictions.shape} and "
                         f"{len(captions)} captions do not match as [T, H, W, 3], [E, T, H, W] x 2, E")
    names = [str(t) for t in range(num_frames)] if frame_names is None else list(frame_names)
    shown = np.unique(np.linspace(0, num_frames - 1, min(max_frames, num_frames)).round().astype(int))
    scale = cell_long_side / max(frames.shape[1:3])
    cell = (max(1, round(frames.shape[2] * scale)), max(1, round(frames.shape[1] * scale)))
    font_size = max(12, cell_long_side // 12)
    label_width = 4 * font_size
    gap = np.zeros((cell[1], 2, 3), np.uint8)

    def row(label: str, masks: np.ndarray, colour) -> np.ndarray:
        cells = []
        for t in shown:
            frame, mask = enlarge(frames[t], masks[t][None], cell_long_side)
            cells += [np.asarray(Image.fromarray(overlay_masks(frame, mask, [colour])).resize(cell, Image.BILINEAR)),
                      gap]
        label_cell = _text_band([(label, (255, 255, 255))], label_width, font_size)[:cell[1]]
        label_cell = np.pad(label_cell, ((0, cell[1] - len(label_cell)), (0, 0), (0, 0)))
        return np.concatenate([label_cell, *cells], axis=1)

    width = label_width + len(shown) * (cell[0] + 2)
    heads = [_text_band([("frame", (200, 200, 200))], label_width, font_size)]
    heads += [_text_band([(names[t], (200, 200, 200))], cell[0] + 2, font_size) for t in shown]
    height = max(len(head) for head in heads)
    parts = [np.concatenate([np.pad(head, ((0, height - len(head)), (0, 0), (0, 0))) for head in heads], axis=1)]
    for e, caption in enumerate(captions):
        colour = colour_of(e)
        parts += [_text_band([(f"{e}: {caption}", colour)], width, font_size),
                  row("truth", truth[e], colour), np.zeros((2, width, 3), np.uint8),
                  row("ours", predictions[e], colour)]
    return np.concatenate(parts, axis=0)


class OverlayWriter:
    """Writes frames to `<stem>.gif` and, when ffmpeg works, `<stem>.mp4` (see the module docstring).

    Attributes after `close()`: `paths`, the files written; `mp4_error`, why there is no MP4 (or None).
    """

    def __init__(self, stem: str, fps: float = 10.0, *, gif: bool = True, mp4: bool = True,
                 gif_max_side: int = 480):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
        self.stem = stem
        self.fps = float(fps)
        self.gif_max_side = int(gif_max_side)
        self._gif_frames: Optional[List[Image.Image]] = [] if gif else None
        self._mp4 = None
        self._mp4_wanted = mp4
        self._size: Optional[Tuple[int, int]] = None
        self.paths: List[str] = []
        self.mp4_error: Optional[str] = None if mp4 else "not requested"

    def _open_mp4(self, height: int, width: int) -> None:
        try:
            self._mp4 = imageio_ffmpeg.write_frames(
                f"{self.stem}.mp4", (width + width % 2, height + height % 2), fps=self.fps, codec="libx264",
                pix_fmt_out="yuv420p", macro_block_size=1, quality=7)
            with ffmpeg_subprocess():
                self._mp4.send(None)
        except Exception as e:  # A missing or broken ffmpeg binary: keep the GIF, say why there is no MP4.
            self._mp4 = None
            self.mp4_error = f"{type(e).__name__}: {e}"

    def add(self, frame: np.ndarray) -> None:
        """Appends one uint8 `[H, W, 3]` frame; every frame must have the first frame's size."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"overlay frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._size is None:
            self._size = frame.shape[:2]
            if self._mp4_wanted:
                self._open_mp4(*self._size)
        elif frame.shape[:2] != self._size:
            raise ValueError(f"overlay frame of size {frame.shape[:2]} after frames of size {self._size}")
        if self._gif_frames is not None:
            image = Image.fromarray(frame)
            scale = self.gif_max_side / max(image.size)
            if scale < 1:
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.BILINEAR)
            self._gif_frames.append(image.quantize(colors=255, method=Image.Quantize.MEDIANCUT))
        if self._mp4 is not None:
            height, width = frame.shape[:2]
            even = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            try:
                self._mp4.send(np.ascontiguousarray(even))
            except Exception as e:
                self._close_mp4(failed=f"{type(e).__name__}: {e}")

    def _close_mp4(self, failed: Optional[str] = None) -> None:
        if self._mp4 is None:
            return
        mp4, self._mp4 = self._mp4, None
        try:
            mp4.close()
        except Exception as e:
            failed = failed or f"{type(e).__name__}: {e}"
        if failed:
            self.mp4_error = failed
            if os.path.exists(f"{self.stem}.mp4"):
                os.remove(f"{self.stem}.mp4")
        else:
            self.paths.append(f"{self.stem}.mp4")

    def close(self) -> List[str]:
        """Finishes the files; returns their paths."""
        if self._size is None:
            raise ValueError(f"no frames were added to {self.stem}")
        self._close_mp4()
        if self._gif_frames:
            frames, self._gif_frames = self._gif_frames, None
            frames[0].save(f"{self.stem}.gif", save_all=True, append_images=frames[1:],
                           duration=round(1000 / self.fps), loop=0, optimize=False)
            self.paths.insert(0, f"{self.stem}.gif")
        return self.paths

    def __enter__(self) -> "OverlayWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_mp4(failed="aborted")
