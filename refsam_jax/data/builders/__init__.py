"""TFDS builders (array_record, no TensorFlow) for Ref-YouTube-VOS, Ref-DAVIS17 and RefCOCO/+/g.

A dataset is named `builder[/config]`: 'ref_youtube_vos', 'ref_davis17', 'refcoco/refcoco',
'refcoco/refcoco_plus', 'refcoco/refcocog'. Build once from the raw layout with `build`, read with
`open_split` (a random-access source of numpy dicts; record layouts in each builder's docstring).
"""

import hashlib
import os
import shutil
from typing import Optional, Tuple

import tensorflow_datasets as tfds
from etils import epath

from refsam_jax.data.builders.common import DataError, decode_label_map, decode_rgb, decode_text
from refsam_jax.data.builders.ref_davis17 import RefDavis17
from refsam_jax.data.builders.ref_youtube_vos import RefYoutubeVos, RefYoutubeVosConfig, heldout_video_ids
from refsam_jax.data.builders.refcoco import Refcoco, RefcocoConfig

BUILDERS = {"ref_youtube_vos": RefYoutubeVos, "ref_davis17": RefDavis17, "refcoco": Refcoco}


def parse_name(name: str) -> Tuple[str, Optional[str]]:
    """'refcoco/refcocog' -> ('refcoco', 'refcocog'); 'ref_davis17' -> ('ref_davis17', None)."""
    builder_name, _, config = name.strip().partition("/")
    if builder_name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known builders: {sorted(BUILDERS)}")
    if builder_name == "refcoco" and not config:
        raise ValueError(
            f"name the RefCOCO variant: 'refcoco/refcoco', 'refcoco/refcoco_plus' or 'refcoco/refcocog', got {name!r}"
        )
    return builder_name, config or None


def get_builder(
    name: str, data_dir: epath.PathLike, *, on_error: str = "raise", config: Optional[tfds.core.BuilderConfig] = None
) -> tfds.core.GeneratorBasedBuilder:
    """The builder of `name` over `data_dir`; `config` overrides the named config (e.g. another heldout_fraction)."""
    builder_name, config_name = parse_name(name)
    return BUILDERS[builder_name](data_dir=str(data_dir), config=config or config_name, on_error=on_error)


def source_fingerprint(manual_dir: epath.PathLike) -> str:
    """A hash of the raw tree's file names, sizes and modification times (changes when a file is fixed)."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(manual_dir):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(folder, name))
            relative = os.path.relpath(os.path.join(folder, name), manual_dir)
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build(
    name: str,
    manual_dir: epath.PathLike,
    data_dir: epath.PathLike,
    *,
    on_error: str = "raise",
    config: Optional[tfds.core.BuilderConfig] = None,
    rebuild: bool = False,
) -> tfds.core.GeneratorBasedBuilder:
    """Reads the raw layout in `manual_dir` and writes array_record files under `data_dir`.

    Returns the builder; with `on_error="skip"` its `skipped` dict counts what was left out (also
    stored in `info.metadata['skipped']`, logged, and reported again when the build is reused). A prepared
    dataset is reused only if it was built from the raw files as they are now (`source_fingerprint`);
    otherwise this raises, and `rebuild=True` deletes and rebuilds it.
    """
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"raw dataset folder {manual_dir} does not exist (--manual_dir: the {name} tree "
                                f"in its public layout)")
    fingerprint = source_fingerprint(manual_dir)
    builder = get_builder(name, data_dir, on_error=on_error, config=config)
    if builder.is_prepared() and builder.info.metadata.get("source_fingerprint") != fingerprint:
        if not rebuild:
            raise DataError("stale_build", f"{builder.data_path} was built from other raw files than {manual_dir} "
                                           f"holds now; rebuild it (python -m refsam_jax.data build ... --rebuild)")
        shutil.rmtree(builder.data_path)
        builder = get_builder(name, data_dir, on_error=on_error, config=config)
    builder.source_fingerprint = fingerprint
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def open_split(name: str, data_dir: epath.PathLike, split: str, *, config: Optional[tfds.core.BuilderConfig] = None):
    """Random-access source (len, [i]) of the prepared `split`, read without TensorFlow."""
    builder = get_builder(name, data_dir, config=config)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"dataset {name!r} is not prepared in {data_dir} (looked in {builder.data_path}); "
            f"build it first: python -m refsam_jax.data build --name {name} --manual_dir <raw> --data_dir {data_dir}"
            + (f" --heldout_fraction {config.heldout_fraction:g} --heldout_seed {config.heldout_seed}"
               if isinstance(config, RefYoutubeVosConfig) else "")
        )
    if split not in builder.info.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


__all__ = [
    "BUILDERS",
    "DataError",
    "RefDavis17",
    "RefYoutubeVos",
    "RefYoutubeVosConfig",
    "Refcoco",
    "RefcocoConfig",
    "build",
    "decode_label_map",
    "decode_rgb",
    "decode_text",
    "get_builder",
    "heldout_video_ids",
    "open_split",
    "parse_name",
]
