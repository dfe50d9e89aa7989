"""Grain training pipeline: clip sampling, augmentation, batch contract, determinism, resume, sharding."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from PIL import Image, ImageEnhance

from refsam_jax.configs.demo import MINILM
from refsam_jax.data import augment, builders, iterate_eval_videos, pipeline, sampling, synthetic
from refsam_jax.data.builders.common import decode_label_map, decode_text
from refsam_jax.text.tokenizer import TextTokenizer, clean_caption

MAX_TEXT = 12
SIZE = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    synthetic.write_ref_youtube_vos(
        root / "ytvos", num_videos=7, num_frames=6, size=(48, 64), seed=11, num_valid_videos=1
    )
    synthetic.write_refcoco(root / "coco", "refcoco", num_images=6, size=(40, 56), seed=12)
    builders.build("ref_youtube_vos", root / "ytvos", root / "tfds")
    builders.build("refcoco/refcoco", root / "coco", root / "tfds")
    return root / "tfds"


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(MINILM, MAX_TEXT)


def _config(data_dir, **overrides):
    cfg = pipeline.default_data_config()
    cfg.name = "ref_youtube_vos,refcoco/refcoco"
    cfg.data_dir = str(data_dir)
    cfg.image_size = SIZE
    cfg.max_text_length = MAX_TEXT
    cfg.batch_size = 4
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def _take(config, tokenizer, n, seed=0, state=None, shard_index=0, shard_count=1):
    iterator = iter(
        pipeline.make_train_loader(config, tokenizer, seed=seed, shard_index=shard_index, shard_count=shard_count)
    )
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(n)], iterator


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [1, 2, 3, 5])
def test_clip_indices_around_the_anchor(num_frames):
    rng = np.random.default_rng(0)
    for _ in range(200):
        length = int(rng.integers(1, 12))
        anchor = int(rng.integers(length))
        idx = sampling.clip_indices(rng, length, anchor, num_frames)
        assert idx.shape == (num_frames,) and np.all(np.diff(idx) >= 0)
        assert anchor in idx and idx.min() >= 0 and idx.max() < length
        if num_frames in (2, 3):
            assert idx.max() - idx.min() <= 6 and np.all(np.abs(idx - anchor) <= 3)
            if num_frames == 3 and 3 <= anchor <= length - 4:
                assert idx[0] < anchor < idx[2]


def test_sample_clip_contains_the_object_and_is_deterministic():
    present = np.zeros(20, bool)
    present[17] = True
    for seed in range(50):
        anchor, idx = sampling.sample_clip(np.random.default_rng(seed), present, 3, max_tries=2)
        assert present[idx].any()
        again = sampling.sample_clip(np.random.default_rng(seed), present, 3, max_tries=2)
        assert anchor == again[0] and np.array_equal(idx, again[1])
    with pytest.raises(ValueError, match="absent"):
        sampling.sample_clip(np.random.default_rng(0), np.zeros(4, bool), 3)


# ---- augmentation ----------------------------------------------------------------------------


def test_swap_left_right():
    assert augment.swap_left_right("the dog on the left, right of the cat") == "the dog on the right, left of the cat"
    assert (
        augment.swap_left_right("Left-most bright upright car, leftmost") == "Right-most bright upright car, rightmost"
    )
    assert augment.swap_left_right("no side words") == "no side words"


def test_colour_jitter_matches_pil_enhance():
    image = np.random.default_rng(1).integers(40, 200, (30, 40, 3)).astype(np.uint8)
    pil = Image.fromarray(image)
    for op, enhancer in (
        ("brightness", ImageEnhance.Brightness),
        ("contrast", ImageEnhance.Contrast),
        ("saturation", ImageEnhance.Color),
    ):
        for factor in (0.6, 1.4):
            reference = np.asarray(enhancer(pil).enhance(factor), np.float32)
            assert np.abs(augment.jitter_colour(image, [(op, factor)]) - reference).max() <= 1.1, (op, factor)
    np.testing.assert_array_equal(augment.jitter_colour(image, []), image.astype(np.float32))
    grey = np.full((4, 4, 3), 90, np.uint8)
    np.testing.assert_allclose(augment.jitter_colour(grey, [("hue", 0.3)]), grey, atol=1e-3)
    shifted = augment.jitter_colour(image, [("hue", 0.2)])
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    unclipped = (shifted > 0).all(-1) & (shifted < 255).all(-1)
    np.testing.assert_allclose((shifted @ luma)[unclipped], (image.astype(np.float32) @ luma)[unclipped], atol=1e-2)
    assert np.abs(shifted - image).max() > 10


def test_flip_mirrors_frames_and_swaps_sentence(data_dir, tokenizer):
    base = dict(
        name="ref_youtube_vos",
        batch_size=2,
        **{"augment.crop_prob": 0.0, "augment.color_jitter_prob": 0.0, "augment.resize_sizes": ()},
    )
    plain, _ = _take(_config(data_dir, **base, **{"augment.flip_prob": 0.0}), tokenizer, 3)
    flipped, _ = _take(_config(data_dir, **base, **{"augment.flip_prob": 1.0}), tokenizer, 3)
    saw_side_word = False
    for p, f in zip(plain, flipped):
        assert f["flipped"].all() and not p["flipped"].any()
        np.testing.assert_array_equal(p["frame_indices"], f["frame_indices"])
        for b in range(2):
            h, w = p["image_size"][b, 0]
            np.testing.assert_array_equal(f["frames"][b, :, :h, :w], p["frames"][b, :, :h, ::-1][:, :, -w:])
            np.testing.assert_array_equal(f["masks"][b, :, :h, :w], p["masks"][b, :, :h, ::-1][:, :, -w:])
            words_p = tokenizer.tokenizer.decode(p["input_ids"][b][p["text_mask"][b]], skip_special_tokens=True)
            words_f = tokenizer.tokenizer.decode(f["input_ids"][b][f["text_mask"][b]], skip_special_tokens=True)
            assert words_f == words_p.replace("left", "@").replace("right", "left").replace("@", "right")
            saw_side_word |= "left" in words_p or "right" in words_p
    assert saw_side_word


def test_colour_jitter_and_crop_are_shared_by_the_clip(data_dir, tokenizer):
    cfg = _config(data_dir, name="refcoco/refcoco", **{"augment.crop_prob": 1.0, "augment.color_jitter_prob": 1.0})
    (batch,), _ = _take(cfg, tokenizer, 1)
    assert not batch["frame_indices"].any()
    for b in range(4):
        for t in range(1, 3):
            np.testing.assert_array_equal(batch["frames"][b, t], batch["frames"][b, 0])
    cfg.augment.per_frame = True
    (batch,), _ = _take(cfg, tokenizer, 1)
    assert any(not np.array_equal(batch["frames"][b, 1], batch["frames"][b, 0]) for b in range(4))


def test_max_crop_size_resizes_through_the_reference_size():
    """data.max_crop_size: crop -> drawn (h, w) shrunk to <= max_crop_size -> model size, images and masks."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (100, 150, 3), dtype=np.uint8) for _ in range(2)]
    masks = rng.random((2, 100, 150)) < 0.5
    aug = augment.ClipAugment(flip=True, crops=((10, 20, 80, 90),) * 2, aspect_hw=(40, 30), colour_ops=((), ()))
    out, out_masks, size = augment.resize_clip(frames, masks, SIZE, aug, max_size=32)
    assert size == (64, 48) and out[0].shape == (64, 48, 3) and out_masks.shape == (2, 64, 48)
    for t in range(2):
        image = Image.fromarray(np.ascontiguousarray(frames[t][10:90, 20:110, :][:, ::-1]))
        mask = Image.fromarray(np.ascontiguousarray(masks[t, 10:90, 20:110][:, ::-1]).astype(np.uint8))
        expected = image.resize((24, 32), Image.BILINEAR).resize((48, 64), Image.BILINEAR)
        np.testing.assert_array_equal(out[t], np.asarray(expected))
        expected_mask = mask.resize((24, 32), Image.NEAREST).resize((48, 64), Image.NEAREST)
        np.testing.assert_array_equal(out_masks[t], np.asarray(expected_mask).astype(bool))
    direct, _, direct_size = augment.resize_clip(frames, masks, SIZE, aug)  # 0: one resize, 80 x 90 -> 64 x 48
    assert direct_size == size and not np.array_equal(direct[0], out[0])
    np.testing.assert_array_equal(direct[0], np.asarray(
        Image.fromarray(np.ascontiguousarray(frames[0][10:90, 20:110][:, ::-1])).resize((48, 64), Image.BILINEAR)))


def test_max_crop_size_reaches_the_pipeline(data_dir, tokenizer):
    (plain,), _ = _take(_config(data_dir, name="ref_youtube_vos"), tokenizer, 1)
    (small,), _ = _take(_config(data_dir, name="ref_youtube_vos", max_crop_size=16), tokenizer, 1)
    assert (small["image_size"].max(-1) == SIZE).all()  # up to the model size (rounded from the small size)
    assert not np.allclose(small["frames"], plain["frames"])


# ---- batches ---------------------------------------------------------------------------------


def test_batch_contract(data_dir, tokenizer):
    batches, _ = _take(_config(data_dir), tokenizer, 4)
    sources = set()
    for batch in batches:
        assert batch["frames"].shape == (4, 3, SIZE, SIZE, 3) and batch["frames"].dtype == np.float32
        assert batch["masks"].shape == (4, 3, SIZE, SIZE) and batch["masks"].dtype == np.float32
        assert batch["image_size"].shape == (4, 3, 2) and batch["image_size"].dtype == np.int32
        assert batch["input_ids"].shape == (4, MAX_TEXT) and batch["input_ids"].dtype == np.int32
        assert batch["text_mask"].shape == (4, MAX_TEXT) and batch["text_mask"].dtype == bool
        assert set(np.unique(batch["masks"])) <= {0.0, 1.0}
        assert batch["masks"].sum(axis=(1, 2, 3)).min() > 0  # the object is in the clip
        assert (batch["image_size"].max(axis=-1) == SIZE).all()
        for b in range(4):
            h, w = batch["image_size"][b, 0]
            assert not batch["frames"][b, :, h:].any() and not batch["frames"][b, :, :, w:].any()
            assert not batch["masks"][b, :, h:].any() and not batch["masks"][b, :, :, w:].any()
            assert batch["text_mask"][b, 0] and not batch["text_mask"][b, -1]
        sources |= set(batch["source_index"].tolist())
    assert sources == {0, 1}


def test_several_sentences_per_clip(data_dir, tokenizer):
    """K sentences of one record share its clip: other objects' sentences first, each with its own mask."""
    num = 3
    cfg = _config(data_dir, expressions_per_clip=num, **{"augment.enabled": False})
    records = {name: builders.open_split(name, data_dir, "train") for name in pipeline.dataset_names(cfg)}
    batches, _ = _take(cfg, tokenizer, 6)
    padded = 0
    for batch in batches:
        assert batch["masks"].shape == (4, num, 3, SIZE, SIZE) and batch["frames"].shape == (4, 3, SIZE, SIZE, 3)
        assert batch["input_ids"].shape == batch["text_mask"].shape == (4, num, MAX_TEXT)
        assert batch["expression_index"].shape == batch["expression_valid"].shape == (4, num)
        for b in range(4):
            name = pipeline.dataset_names(cfg)[batch["source_index"][b]]
            record = records[name][int(batch["record_index"][b])]
            video = "expressions" in record
            sentences = record["expressions"] if video else record["sentences"]
            objects = sentences["obj_id"] if video else sentences["object_index"]
            chosen = batch["expression_index"][b]
            valid = batch["expression_valid"][b]
            assert valid.sum() == min(num, len(objects)) and valid[0] and not (valid[1:] > valid[:-1]).any()
            padded += int((~valid).sum())
            np.testing.assert_array_equal(chosen[~valid], chosen[0])  # padding repeats the first sentence
            valid_objects = [int(objects[e]) for e in chosen[valid]]
            assert len(set(chosen[valid].tolist())) == len(valid_objects)
            assert len(set(valid_objects)) == min(len(valid_objects), len(set(int(o) for o in objects)))
            h, w = batch["image_size"][b, 0]
            for k, expression in enumerate(chosen):
                ids, text_mask = tokenizer([clean_caption(decode_text(sentences["sentence"][expression]))])
                np.testing.assert_array_equal(batch["input_ids"][b, k], ids[0])
                if video:
                    labels = np.stack([decode_label_map(record["label_maps"][i]) for i in batch["frame_indices"][b]])
                    target = labels == int(objects[expression])
                else:
                    target = np.stack([decode_label_map(record["objects"]["mask"][int(objects[expression])]) > 0] * 3)
                frames = [np.zeros(target.shape[1:] + (3,), np.uint8)] * 3
                _, expected, _ = augment.resize_clip(frames, target, SIZE)
                np.testing.assert_array_equal(batch["masks"][b, k, :, :h, :w], expected.astype(np.float32))
    assert padded > 0  # single-object records were padded
    with pytest.raises(ValueError, match="data.expressions_per_clip must be in 1..8, got 9"):
        pipeline.make_train_loader(_config(data_dir, expressions_per_clip=9), tokenizer, seed=0)


def test_same_seed_same_batches_and_resume(data_dir, tokenizer):
    cfg = _config(data_dir)
    first, _ = _take(cfg, tokenizer, 5, seed=3)
    again, _ = _take(cfg, tokenizer, 5, seed=3)
    _assert_batches_equal(first, again)
    other, _ = _take(cfg, tokenizer, 5, seed=4)
    assert not all(np.array_equal(a["frames"], b["frames"]) for a, b in zip(first, other))
    _, interrupted = _take(cfg, tokenizer, 2, seed=3)
    state = interrupted.get_state()
    resumed, _ = _take(cfg, tokenizer, 3, seed=3, state=state)
    _assert_batches_equal(resumed, first[2:])


def test_iterator_state_through_orbax(data_dir, tokenizer, tmp_path):
    cfg = _config(data_dir)
    reference, _ = _take(cfg, tokenizer, 4, seed=5)
    _, iterator = _take(cfg, tokenizer, 2, seed=5)
    manager = ocp.CheckpointManager(epath.Path(tmp_path) / "ckpt")
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    restored = iter(pipeline.make_train_loader(cfg, tokenizer, seed=5, shard_index=0, shard_count=1))
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    _assert_batches_equal([next(restored), next(restored)], reference[2:])


def test_host_shards_are_disjoint_and_cover_the_records(data_dir, tokenizer):
    cfg = _config(data_dir, batch_size=2, num_epochs=1, shuffle=True)
    total = sum(len(builders.open_split(n, data_dir, "train")) for n in pipeline.dataset_names(cfg))
    seen = []
    for shard in range(2):
        loader = pipeline.make_train_loader(cfg, tokenizer, seed=0, shard_index=shard, shard_count=2)
        seen.append({(int(b["source_index"][0]), int(b["record_index"][0])) for b in loader})
    assert seen[0].isdisjoint(seen[1])
    assert len(seen[0] | seen[1]) == total


def test_split_without_ground_truth_fails_naming_the_record(data_dir, tokenizer):
    cfg = _config(data_dir, name="ref_youtube_vos", split="valid", batch_size=1)
    with pytest.raises(
        Exception, match=r"ref_youtube_vos split 'valid' record 0 \(\w+\): no expression with ground truth"
    ):
        _take(cfg, tokenizer, 1)


def test_unknown_dataset_and_unprepared_data_are_clear(data_dir, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        _take(_config(data_dir, name="ref_coco"), tokenizer, 1)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        _take(_config(tmp_path, name="ref_davis17"), tokenizer, 1)


def test_eval_source_ytvos_valid_has_no_masks(data_dir):
    items = list(iterate_eval_videos("ref_youtube_vos", data_dir, "valid"))
    assert items and all(item.masks is None and item.obj_id == -1 for item in items)
    source = builders.open_split("ref_youtube_vos", data_dir, "valid")
    assert {item.video_id for item in items} == {decode_text(source[i]["video_id"]) for i in range(len(source))}


def test_prepare_builds_a_custom_heldout_split(tmp_path, tokenizer):
    synthetic.write_ref_youtube_vos(
        tmp_path / "raw", num_videos=7, num_frames=4, size=(24, 32), seed=2, num_valid_videos=0
    )
    cfg = _config(tmp_path / "tfds", name="ref_youtube_vos", manual_dir=str(tmp_path / "raw"), heldout_fraction=0.3)
    assert pipeline.prepare(cfg) == {"ref_youtube_vos": {}}
    config = pipeline.builder_config("ref_youtube_vos", cfg)
    assert len(builders.open_split("ref_youtube_vos", tmp_path / "tfds", "heldout", config=config)) == 2
    cfg.split, cfg.batch_size = "heldout", 1
    (batch,), _ = _take(cfg, tokenizer, 1)
    assert batch["frames"].shape == (1, 3, SIZE, SIZE, 3)
    items = list(iterate_eval_videos("ref_youtube_vos", tmp_path / "tfds", "heldout", builder_config=config))
    assert len({item.video_id for item in items}) == 2 and all(item.masks.shape == (4, 24, 32) for item in items)
