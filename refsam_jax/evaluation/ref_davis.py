"""Ref-DAVIS17: writing predictions and the official evaluation (DATASETS.md §2.3, REFSAM_SPEC.md §6.3).

Protocol, as ReferFormer and RefSAM run it:
- Each object of a video has 4 expressions, exp_id = 4 * k + a for object k (0-based) and expression
  set a: 0 = annotator 1 first-frame, 1 = annotator 1 full-video, 2 = annotator 2 first-frame,
  3 = annotator 2 full-video. For each set a, the per-object outputs of a frame are merged into one
  index PNG (`merge_object_masks`; object k gets id k + 1) saved at `<pred>/<a>/<video>/<frame>.png`.
- Each set is scored separately with DAVIS-2017 `--task unsupervised` on
  `DAVIS/Annotations_unsupervised/480p` and the sequences of `DAVIS/ImageSets/2017/<set>.txt`:
  the GT objects are ids 1..max(first GT frame) (void 255 aside; later ids are unscored); the
  proposals are ids 1..max over all predicted frames (at most 20), padded with empty masks up to the
  number of GT objects; every (proposal, object) pair gets per-frame J and F over all frames, and
  `linear_sum_assignment` on -(mean J + mean F) / 2 picks one proposal per object.
- J-Mean (F-Mean) = mean over all objects of all sequences of the per-object frame mean; J&F is their
  average. The reported number is the plain mean of the 4 sets.
Void (255) GT pixels are left out of both masks, as in davisvideochallenge/davis2017-evaluation:
`DAVIS.get_all_masks` (davis2017/davis.py) records each frame's void mask (`== 255`) before it sets
255 to 0 and splits the objects, and `DAVISEvaluation._evaluate_unsupervised` passes that one
`[T, H, W]` mask, the same for every (proposal, object) pair, to `db_eval_iou` and
`db_eval_boundary` (davis2017/metrics.py). J counts intersection and union over non-void pixels only
(an empty union gives J = 1); `f_measure` zeroes the void pixels of the predicted and of the GT mask
before extracting their boundaries, so a void hole inside a prediction adds boundary pixels.
(Revision 30b698a of that repository instead set 255 to 0 before anything else and then compared the
boolean object masks with 255, which never holds, so void counted as background there; this module
follows the revision with `masks_void` described above.)
"""

import csv
import dataclasses
import io
import os
from typing import AbstractSet, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from refsam_jax.evaluation import EvaluationInputError, describe_paths, read_mask_png, require_files
from refsam_jax.evaluation.metrics import DEFAULT_BOUND_TH, frame_statistics, pairwise_jf

ANNOTATORS = (0, 1, 2, 3)
ANNOTATOR_NAMES = ("annot1 first-frame", "annot1 full-video", "annot2 first-frame", "annot2 full-video")
MAX_PROPOSALS = 20
VOID_LABEL = 255
MATCHINGS = ("hungarian", "identity")


def davis_palette() -> List[int]:
    """The 256-colour PASCAL VOC palette of the DAVIS annotation PNGs, flat [r0, g0, b0, r1, ...]."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        code = index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette.extend(rgb)
    return palette


def merge_object_masks(scores: Mapping[int, np.ndarray], background: float = 0.1,
                       zero_below: float = 0.0) -> np.ndarray:
    """Per-object score maps -> one uint8 index map `[H, W]`, as the Ref-DAVIS inference scripts do.

    Scores below `zero_below` are set to 0, a constant `background` plane is put first, and each pixel
    takes the argmax (ties go to the background, then to the lower object id). RefSAM applies this to
    logits with `zero_below=0` (so an object needs a logit > 0.1); ReferFormer to probabilities with
    `zero_below=0.5`.

    Args:
      scores: object id (1..255) -> float `[H, W]`; all the same shape.
      background: the background plane's constant score.
      zero_below: scores below this are zeroed before the argmax.
    """
    if not scores:
        raise ValueError("merge_object_masks needs at least one object")
    ids = sorted(scores)
    if any(not 1 <= int(i) <= 255 for i in ids):
        raise ValueError(f"object ids must be integers in 1..255, got {ids}")
    planes = [np.asarray(scores[i]) for i in ids]
    shapes = {p.shape for p in planes}
    if len(shapes) != 1 or planes[0].ndim != 2:
        raise ValueError(f"score maps must all be [H, W] of one shape, got {sorted(shapes)}")
    stack = np.stack(planes)
    if not np.issubdtype(stack.dtype, np.floating):
        stack = stack.astype(np.float32)
    stack = np.where(stack < zero_below, stack.dtype.type(0), stack)
    stack = np.concatenate([np.full((1,) + stack.shape[1:], background, stack.dtype), stack])
    labels = np.array([0] + [int(i) for i in ids], np.uint8)
    return labels[np.argmax(stack, axis=0)]


def save_index_png(labels: np.ndarray, path: str, palette: Optional[Sequence[int]] = None) -> None:
    """Writes uint8 `[H, W]` object ids as a palette PNG (DAVIS palette unless given)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"labels must be uint8 [H, W], got {labels.dtype} {labels.shape}")
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(list(palette) if palette is not None else davis_palette())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path, format="PNG")


def prediction_path(pred_root: str, annotator: int, video: str, frame: str) -> str:
    """`<pred_root>/<annotator>/<video>/<frame>.png`, the layout `evaluate_ref_davis` reads."""
    return os.path.join(pred_root, str(annotator), video, f"{frame}.png")


def write_davis_prediction(pred_root: str, annotator: int, video: str, frame: str,
                           scores: Mapping[int, np.ndarray], background: float = 0.1,
                           zero_below: float = 0.0, palette: Optional[Sequence[int]] = None) -> str:
    """Merges one frame's per-object scores (object k of the video -> id k + 1) and saves the PNG.

    Returns the written path, `prediction_path(pred_root, annotator, video, frame)`.
    """
    if annotator not in ANNOTATORS:
        raise ValueError(f"annotator must be one of {ANNOTATORS}, got {annotator}")
    path = prediction_path(pred_root, annotator, video, frame)
    save_index_png(merge_object_masks(scores, background, zero_below), path, palette)
    return path


def read_sequence_list(davis_root: str, subset: str = "val") -> List[str]:
    """Sequence names of `<davis_root>/ImageSets/2017/<subset>.txt`."""
    path = os.path.join(davis_root, "ImageSets", "2017", f"{subset}.txt")
    if not os.path.isfile(path):
        raise EvaluationInputError(f"missing sequence list {path} (is --gt the DAVIS folder?)")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def ground_truth_frames(davis_root: str, sequence: str, resolution: str = "480p") -> List[str]:
    """Sorted frame names of `Annotations_unsupervised/<resolution>/<sequence>/*.png`."""
    folder = os.path.join(davis_root, "Annotations_unsupervised", resolution, sequence)
    if not os.path.isdir(folder):
        raise EvaluationInputError(f"missing ground-truth folder {folder}")
    frames = sorted(name[:-4] for name in os.listdir(folder) if name.endswith(".png"))
    if not frames:
        raise EvaluationInputError(f"no PNG annotations in {folder}")
    return frames


def read_ground_truth(davis_root: str, sequence: str,
                      resolution: str = "480p") -> Tuple[np.ndarray, List[str]]:
    """`Annotations_unsupervised/<resolution>/<sequence>/*.png` -> (uint8 ids `[T, H, W]`, frame names).

    The ids are as stored: void pixels keep `VOID_LABEL` (255); `score_sequence` separates them.
    """
    folder = os.path.join(davis_root, "Annotations_unsupervised", resolution, sequence)
    frames = ground_truth_frames(davis_root, sequence, resolution)
    first = read_mask_png(os.path.join(folder, f"{frames[0]}.png"))
    labels = np.stack([first] + [read_mask_png(os.path.join(folder, f"{frame}.png"), first.shape)
                                 for frame in frames[1:]]).astype(np.uint8)
    return labels, frames


def _annotator_dir(pred_root: str, annotator: int) -> str:
    """`<pred_root>/<a>` (RefSAM) or `<pred_root>/anno_<a>` (ReferFormer), whichever exists."""
    found = [d for d in (os.path.join(pred_root, str(annotator)),
                         os.path.join(pred_root, f"anno_{annotator}")) if os.path.isdir(d)]
    if len(found) > 1:
        raise EvaluationInputError(f"both {found[0]} and {found[1]} exist; keep one")
    if not found:
        raise EvaluationInputError(
            f"missing predictions for expression set {annotator}: no folder {annotator}/ or "
            f"anno_{annotator}/ in {pred_root}")
    return found[0]


def _read_predictions(sequence_dir: str, frames: Sequence[str], shape: Tuple[int, int],
                      missing: AbstractSet[str]) -> np.ndarray:
    """Index PNGs `<sequence_dir>/<frame>.png` -> uint8 ids `[T, H, W]`; paths in `missing` are empty."""
    labels = np.zeros((len(frames),) + tuple(shape), np.uint8)
    for t, frame in enumerate(frames):
        path = os.path.join(sequence_dir, f"{frame}.png")
        if path not in missing:
            labels[t] = read_mask_png(path, shape)
    return labels


def _check_proposals(labels: np.ndarray, sequence_dir: str) -> None:
    num_proposals = int(labels.max(initial=0))
    if num_proposals > MAX_PROPOSALS:
        hint = (" (0/255 masks? Ref-DAVIS predictions are index PNGs with object ids 1..N)"
                if num_proposals == 255 else "")
        raise EvaluationInputError(
            f"{sequence_dir}: object id {num_proposals} exceeds the {MAX_PROPOSALS} proposals the "
            f"DAVIS evaluation allows{hint}")


@dataclasses.dataclass(frozen=True)
class ObjectScore:
    """One ground-truth object of one set: its matched proposal and J/F (mean, recall, decay)."""
    sequence: str
    object_id: int
    proposal_id: int
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float


def score_sequence(pred_labels: np.ndarray, gt_labels: np.ndarray, sequence: str,
                   matching: str = "hungarian",
                   bound_th: float = DEFAULT_BOUND_TH) -> List[ObjectScore]:
    """Scores one sequence's predicted ids `[T, H, W]` against GT ids `[T, H, W]`.

    GT pixels equal to `VOID_LABEL` (255) are void: they are left out of J and F of every pair
    (module docstring). GT objects are ids 1..max(first frame, void aside); proposals are ids
    1..max(all predicted frames), padded with empty masks to the number of objects.
    `matching="hungarian"` is the official assignment; `"identity"` pairs proposal k with object k
    (a diagnostic, not the protocol).
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    gt_labels = np.asarray(gt_labels)
    void = gt_labels == VOID_LABEL
    gt_labels = np.where(void, 0, gt_labels)
    num_objects = int(gt_labels[0].max(initial=0))
    if num_objects == 0:
        return []
    num_proposals = max(int(pred_labels.max(initial=0)), num_objects)
    j, f = pairwise_jf(pred_labels, gt_labels, num_proposals, num_objects,
                       void=void if void.any() else None, bound_th=bound_th)
    if matching == "hungarian":
        cost = (j.mean(axis=2) + f.mean(axis=2)) / 2
        proposals, objects = linear_sum_assignment(-cost)
    else:
        proposals, objects = np.arange(num_objects), np.arange(num_objects)
    scores = []
    for p, k in sorted(zip(proposals, objects), key=lambda pair: pair[1]):
        scores.append(ObjectScore(sequence, int(k) + 1, int(p) + 1, *frame_statistics(j[p, k]),
                                  *frame_statistics(f[p, k])))
    return scores


@dataclasses.dataclass
class SetResult:
    """One expression set's evaluation: per-object scores and the missing prediction files."""
    annotator: int
    objects: List[ObjectScore]
    missing: List[str]

    def summary(self) -> Dict[str, float]:
        """The official global numbers (`global_results-val.csv`) as fractions."""
        if not self.objects:
            raise EvaluationInputError("no ground-truth objects were scored")
        stats = {name: float(np.mean([getattr(o, name) for o in self.objects]))
                 for name in ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")}
        return {"JF": (stats["j_mean"] + stats["f_mean"]) / 2, "J": stats["j_mean"],
                "J_recall": stats["j_recall"], "J_decay": stats["j_decay"], "F": stats["f_mean"],
                "F_recall": stats["f_recall"], "F_decay": stats["f_decay"]}


@dataclasses.dataclass
class RefDavisResult:
    """All evaluated expression sets; J, F and JF are the plain means over the sets."""
    sets: Dict[int, SetResult]
    sequences: List[str]
    sequences_without_objects: List[str]
    matching: str

    def check(self) -> "RefDavisResult":
        """Raises unless some ground-truth object was scored; returns the result."""
        if not next(iter(self.sets.values())).objects:
            raise EvaluationInputError(
                f"no ground-truth objects in any first frame of {describe_paths(self.sequences)}")
        return self

    def to_json(self) -> Dict[str, object]:
        return {"sets": {str(a): {"objects": [dataclasses.astuple(o) for o in s.objects], "missing": s.missing}
                         for a, s in self.sets.items()},
                "sequences": self.sequences, "sequences_without_objects": self.sequences_without_objects,
                "matching": self.matching}

    @classmethod
    def from_json(cls, value: Mapping[str, object]) -> "RefDavisResult":
        sets = {int(a): SetResult(int(a), [ObjectScore(*o) for o in s["objects"]], list(s["missing"]))
                for a, s in value["sets"].items()}
        return cls(sets, list(value["sequences"]), list(value["sequences_without_objects"]), value["matching"])

    @classmethod
    def merge(cls, parts: Sequence["RefDavisResult"]) -> "RefDavisResult":
        """The result of disjoint sets of sequences as one, sequences (and their objects) in name order."""
        first = parts[0]
        sets = {a: SetResult(a, sorted((o for p in parts for o in p.sets[a].objects), key=lambda o: o.sequence),
                             sorted(m for p in parts for m in p.sets[a].missing)) for a in first.sets}
        return cls(sets, sorted(q for p in parts for q in p.sequences),
                   sorted(q for p in parts for q in p.sequences_without_objects), first.matching)

    def summary(self) -> Dict[str, object]:
        per_set = {a: s.summary() for a, s in self.sets.items()}
        mean = {key: float(np.mean([s[key] for s in per_set.values()])) for key in ("J", "F", "JF")}
        first = next(iter(self.sets.values()))
        return {**mean, "sets": {str(a): s for a, s in per_set.items()},
                "num_sequences": len(self.sequences), "num_objects": len(first.objects),
                "matching": self.matching,
                "missing": sum(len(s.missing) for s in self.sets.values())}

    def table_rows(self) -> Tuple[List[str], List[List[object]]]:
        """Per-object table: header and rows (sequence, object id, J/F per set, mean J, F, J&F)."""
        annotators = list(self.sets)
        header = ["sequence", "object"]
        for a in annotators:
            header += [f"J_{a}", f"F_{a}"]
        header += ["J", "F", "JF"]
        rows = []
        for i, first in enumerate(self.sets[annotators[0]].objects):
            per_set = [self.sets[a].objects[i] for a in annotators]
            j = float(np.mean([o.j_mean for o in per_set]))
            f = float(np.mean([o.f_mean for o in per_set]))
            row: List[object] = [first.sequence, first.object_id]
            for o in per_set:
                row += [o.j_mean, o.f_mean]
            rows.append(row + [j, f, (j + f) / 2])
        return header, rows

    def format_table(self) -> str:
        """The per-object table and the per-set global numbers as aligned text."""
        header, rows = self.table_rows()
        out = io.StringIO()
        widths = [max(len(header[0]), *(len(str(r[0])) for r in rows))] + [7] * (len(header) - 1)
        out.write(" ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip() + "\n")
        for row in rows:
            cells = [str(row[0]), str(row[1])] + [f"{v:.4f}" for v in row[2:]]
            out.write(" ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() + "\n")
        keys = ("JF", "J", "J_recall", "J_decay", "F", "F_recall", "F_decay")
        out.write("\n" + " ".join(["set ", "name".ljust(19), "J&F    ", "J      ", "J-rec  ", "J-dec  ",
                                    "F      ", "F-rec  ", "F-dec"]) + "\n")
        for a, set_result in self.sets.items():
            g = set_result.summary()
            out.write(" ".join([str(a).ljust(4), ANNOTATOR_NAMES[a].ljust(19)]
                               + [f"{g[k]:<7.4f}" for k in keys]).rstrip() + "\n")
        mean = self.summary()
        out.write(" ".join(["mean", "".ljust(19), f"{mean['JF']:<7.4f}", f"{mean['J']:<7.4f}",
                            " " * 15, f"{mean['F']:.4f}"]) + "\n")
        return out.getvalue()

    def write_csv(self, path: str) -> None:
        header, rows = self.table_rows()
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def evaluate_ref_davis(pred_root: str, davis_root: str, subset: str = "val",
                       annotators: Sequence[int] = ANNOTATORS,
                       sequences: Optional[Sequence[str]] = None, matching: str = "hungarian",
                       skip_missing: bool = False, resolution: str = "480p",
                       bound_th: float = DEFAULT_BOUND_TH) -> RefDavisResult:
    """Ref-DAVIS17 J, F, J&F of `<pred_root>/<a>/<seq>/<frame>.png` for each expression set a.

    Args:
      pred_root: folder with one sub-folder per expression set (`0`..`3`, or `anno_0`..`anno_3`).
      davis_root: the DAVIS folder (`Annotations_unsupervised/<resolution>`, `ImageSets/2017`).
      subset: the `ImageSets/2017/<subset>.txt` sequence list, unless `sequences` is given.
      annotators: which expression sets to evaluate (the protocol averages all four).
      matching: "hungarian" (official) or "identity".
      skip_missing: score missing prediction files/folders as empty and list them, instead of raising.
    """
    sequences = list(sequences) if sequences is not None else read_sequence_list(davis_root, subset)
    return score_ref_davis(pred_root, davis_root, sequences, annotators, matching, skip_missing, resolution,
                           bound_th).check()


def score_ref_davis(pred_root: str, davis_root: str, sequences: Sequence[str],
                    annotators: Sequence[int] = ANNOTATORS, matching: str = "hungarian",
                    skip_missing: bool = False, resolution: str = "480p",
                    bound_th: float = DEFAULT_BOUND_TH) -> RefDavisResult:
    """`evaluate_ref_davis` of the listed sequences, which may hold no object (one process's share of an
    evaluation, to `RefDavisResult.merge`)."""
    if not annotators or any(a not in ANNOTATORS for a in annotators):
        raise ValueError(f"annotators must be a non-empty subset of {ANNOTATORS}, got {annotators}")
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    annotator_dirs = {a: _annotator_dir(pred_root, a) for a in annotators}
    frames = {seq: ground_truth_frames(davis_root, seq, resolution) for seq in sequences}
    expected = {a: [os.path.join(annotator_dirs[a], seq, f"{frame}.png")
                    for seq in sequences for frame in frames[seq]] for a in annotators}
    missing = set(require_files([p for a in annotators for p in expected[a]], skip_missing))
    sets = {a: SetResult(a, [], [p for p in expected[a] if p in missing]) for a in annotators}
    without_objects = []
    for sequence in sequences:
        gt_labels, _ = read_ground_truth(davis_root, sequence, resolution)
        if not np.any((gt_labels[0] != 0) & (gt_labels[0] != VOID_LABEL)):
            without_objects.append(sequence)
        for a in annotators:
            sequence_dir = os.path.join(annotator_dirs[a], sequence)
            pred_labels = _read_predictions(sequence_dir, frames[sequence], gt_labels.shape[1:],
                                            missing)
            _check_proposals(pred_labels, sequence_dir)
            sets[a].objects += score_sequence(pred_labels, gt_labels, sequence, matching, bound_th)
    return RefDavisResult(sets, list(sequences), without_objects, matching)
