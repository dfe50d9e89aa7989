"""TFDS builders: exact round trip of the synthetic raw layouts (built in a separate process), splits,
and bad raw input (clear errors naming the file, or counted skips)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from refsam_jax.data import builders, coco_masks, eval_source, synthetic
from refsam_jax.data.builders.common import DataError, decode_label_map, decode_text

SIZE = (40, 56)


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Raw layouts written here, array_record files built by another Python process."""
    root = tmp_path_factory.mktemp("data")
    raw = {
        "ytvos": synthetic.write_ref_youtube_vos(root / "ytvos", num_videos=8, num_frames=5, size=SIZE, seed=0),
        "davis": synthetic.write_ref_davis17(root / "davis", num_videos=2, num_frames=4, size=SIZE, seed=1),
        "refcoco": synthetic.write_refcoco(root / "coco", "refcoco", num_images=5, size=SIZE, seed=2),
        "refcocog": synthetic.write_refcoco(
            root / "coco", "refcocog", num_images=4, size=SIZE, seed=3, segmentation="compressed_rle"
        ),
    }
    data_dir = root / "tfds"
    _run_python(f"""
        from refsam_jax.data import builders
        for name, manual in [("ref_youtube_vos", "ytvos"), ("ref_davis17", "davis"), ("refcoco/refcoco", "coco"), ("refcoco/refcocog", "coco")]:
            builders.build(name, "{root}/" + manual, "{data_dir}")
    """)
    return root, data_dir, raw


def _records(data_dir, name, split):
    source = builders.open_split(name, data_dir, split)
    return [source[i] for i in range(len(source))]


def _check_video_record(record, split_dir, meta_video):
    vid = decode_text(record["video_id"])
    names = [decode_text(n) for n in record["frame_names"]]
    assert names == meta_video["frames"]
    for name, data in zip(names, record["frames"]):
        assert data == (split_dir / "JPEGImages" / vid / f"{name}.jpg").read_bytes()
    exps = record["expressions"]
    assert [decode_text(e) for e in exps["exp_id"]] == list(meta_video["expressions"])
    assert [decode_text(s) for s in exps["sentence"]] == [e["exp"] for e in meta_video["expressions"].values()]
    return vid, names


def test_ref_youtube_vos_round_trip(built):
    root, data_dir, raw = built
    meta = json.loads((root / "ytvos/meta_expressions/train/meta_expressions.json").read_text())["videos"]
    train, heldout = _records(data_dir, "ref_youtube_vos", "train"), _records(data_dir, "ref_youtube_vos", "heldout")
    train_ids = {decode_text(r["video_id"]) for r in train}
    heldout_ids = {decode_text(r["video_id"]) for r in heldout}
    assert train_ids.isdisjoint(heldout_ids) and train_ids | heldout_ids == set(meta)
    assert sorted(heldout_ids) == builders.heldout_video_ids(list(meta), 0.05, 0) and len(heldout_ids) == 1
    gaps = {int(b) - int(a) for v in meta.values() for a, b in zip(v["frames"], v["frames"][1:])}
    assert 5 in gaps and len(gaps) > 1  # irregular frame-name gaps, as in the real data
    for record in train + heldout:
        vid, names = _check_video_record(record, root / "ytvos/train", meta[decode_text(record["video_id"])])
        labels = []
        for name, data in zip(names, record["label_maps"]):
            png = root / "ytvos/train/Annotations" / vid / f"{name}.png"
            assert data == png.read_bytes()
            labels.append(np.asarray(Image.open(png)))
        labels = np.stack(labels)
        ids = record["object_ids"].tolist()
        assert ids == sorted(int(k) for k in raw["ytvos"]["train"][vid]["objects"])
        np.testing.assert_array_equal(record["object_present"], [(labels == o).any(axis=(1, 2)) for o in ids])
        exp_obj = [int(e["obj_id"]) for e in meta[vid]["expressions"].values()]
        assert record["expressions"]["obj_id"] == exp_obj
        assert [decode_text(c) for c in record["object_categories"]] == [
            raw["ytvos"]["train"][vid]["objects"][str(o)]["category"] for o in ids
        ]
    valid = _records(data_dir, "ref_youtube_vos", "valid")
    valid_meta = json.loads((root / "ytvos/meta_expressions/valid/meta_expressions.json").read_text())["videos"]
    test_meta = json.loads((root / "ytvos/meta_expressions/test/meta_expressions.json").read_text())["videos"]
    assert {decode_text(r["video_id"]) for r in valid} == set(valid_meta) - set(test_meta) == set(raw["ytvos"]["valid"])
    for record in valid:
        _check_video_record(record, root / "ytvos/valid", valid_meta[decode_text(record["video_id"])])
        assert len(record["label_maps"]) == 0 and set(record["expressions"]["obj_id"]) == {-1}


def test_synthetic_style_sets_colours_shapes_gaps_and_sentences(tmp_path):
    style = synthetic.Style(colours={"cyan": (40, 200, 210), "navy": (20, 30, 110)},
                            shapes=("diamond", "hexagon", "star"), frame_gaps=(2,), late_start=0.0,
                            sentences=("the {colour} {shape} {lane}",))
    manifest = synthetic.write_ref_youtube_vos(tmp_path, num_videos=4, num_frames=3, seed=2, max_objects=2,
                                               style=style, num_valid_videos=0, num_test_videos=0)
    for video in manifest["train"].values():
        assert video["frames"] == ["00000", "00002", "00004"]
        for expression in video["expressions"].values():
            obj = video["objects"][expression["obj_id"]]
            assert expression["exp"].startswith(f"the {obj['colour']} {obj['category']} ")
            assert obj["colour"] in style.colours and obj["category"] in style.shapes
            assert obj["frames"] == video["frames"]  # late_start=0: every object from the first frame
    for shape in ("diamond", "hexagon", "star"):
        area = synthetic._rasterise(synthetic.shape_polygon(shape, 20, 20, 10), 40, 40).sum()
        assert 0 < area < 20 * 20  # inside the 20 x 20 box
    with pytest.raises(ValueError, match="3 objects of distinct colours and shapes, but the style has 2 colours"):
        synthetic.write_ref_youtube_vos(tmp_path / "x", style=style)


def test_heldout_split_is_deterministic_and_seeded():
    ids = [f"video{i:03d}" for i in range(100)]
    first = builders.heldout_video_ids(ids, 0.07, 3)
    assert first == builders.heldout_video_ids(list(reversed(ids)), 0.07, 3)
    assert len(first) == 7 and set(first) <= set(ids)
    assert first != builders.heldout_video_ids(ids, 0.07, 4)
    assert len(builders.heldout_video_ids(ids[:3], 0.05, 0)) == 1


def test_ref_davis17_round_trip(built):
    root, data_dir, raw = built
    for split in ("train", "valid"):
        meta = json.loads((root / f"davis/meta_expressions/{split}/meta_expressions.json").read_text())["videos"]
        records = _records(data_dir, "ref_davis17", split)
        assert {decode_text(r["video_id"]) for r in records} == set(meta)
        for record in records:
            vid, names = _check_video_record(record, root / f"davis/{split}", meta[decode_text(record["video_id"])])
            assert names == [f"{i:05d}" for i in range(4)]
            for name, data in zip(names, record["label_maps"]):
                assert data == (root / f"davis/{split}/Annotations" / vid / f"{name}.png").read_bytes()
            exps = record["expressions"]
            n = len(exps["exp_id"])
            assert n % 4 == 0
            assert exps["annotator"] == [0, 0, 1, 1] * (n // 4)
            assert [decode_text(k) for k in exps["kind"]] == ["first_frame", "full_video"] * (n // 2)
    items = list(eval_source.iterate_eval_videos("ref_davis17", data_dir, "valid"))
    assert [(i.annotator, i.kind) for i in items[:4]] == [
        (0, "first_frame"),
        (0, "full_video"),
        (1, "first_frame"),
        (1, "full_video"),
    ]
    item = items[0]
    labels = np.stack(
        [
            np.asarray(Image.open(root / "davis/valid/Annotations" / item.video_id / f"{n}.png"))
            for n in item.frame_names
        ]
    )
    np.testing.assert_array_equal(item.masks, labels == item.obj_id)
    assert item.frames[0].dtype == np.uint8 and item.frames[0].shape == SIZE + (3,)


def test_refcoco_round_trip(built):
    root, data_dir, _ = built
    for dataset, config, splits in (
        ("refcoco", "refcoco", ("train", "val", "testA", "testB")),
        ("refcocog", "refcocog", ("train", "val", "test")),
    ):
        for split in splits:
            coco = json.loads((root / f"coco/{dataset}/instances_{dataset}_{split}.json").read_text())
            anns = {a["image_id"]: a for a in coco["annotations"]}
            expected = {e["id"]: (e, anns[e["id"]]) for e in coco["images"]}
            seen = set()
            for record in _records(data_dir, f"refcoco/{config}", split):
                file_name = decode_text(record["file_name"])
                assert record["image"] == (root / "coco/train2014" / file_name).read_bytes()
                objects, sentences = record["objects"], record["sentences"]
                for sid, sentence, obj in zip(
                    sentences["sentence_id"], sentences["sentence"], sentences["object_index"]
                ):
                    entry, ann = expected[int(sid)]
                    assert (decode_text(sentence), file_name, int(record["image_id"])) == (
                        entry["caption"],
                        entry["file_name"],
                        entry["original_id"],
                    )
                    assert int(objects["ann_id"][obj]) == ann["original_id"]
                    mask = decode_label_map(objects["mask"][obj]) > 0
                    np.testing.assert_array_equal(mask, coco_masks.segmentation_to_mask(ann["segmentation"], *SIZE))
                    seen.add(int(sid))
            assert seen == set(expected)


def test_reading_needs_no_tensorflow(built):
    _, data_dir, _ = built
    out = _run_python(f"""
        import sys
        from refsam_jax.data import builders
        for name, split in [("ref_youtube_vos", "train"), ("ref_davis17", "valid"), ("refcoco/refcoco", "testA")]:
            assert len(builders.open_split(name, "{data_dir}", split)[0]) > 0
        assert "tensorflow" not in sys.modules
        try:
            import tensorflow
        except ImportError:
            print("no tensorflow")
    """)
    assert "no tensorflow" in out


# ---- bad input -------------------------------------------------------------------------------


@pytest.fixture
def small_ytvos(tmp_path):
    manifest = synthetic.write_ref_youtube_vos(
        tmp_path / "raw", num_videos=3, num_frames=3, size=(24, 32), seed=5, num_valid_videos=1
    )
    return tmp_path, manifest


def _first_train_frame(tmp_path, manifest):
    vid = sorted(manifest["train"])[0]
    return vid, manifest["train"][vid]["frames"][1]


def _build(tmp_path, name="ref_youtube_vos", on_error="raise", raw="raw"):
    return builders.build(name, tmp_path / raw, tmp_path / f"tfds_{on_error}", on_error=on_error)


@pytest.mark.parametrize(
    "damage, kind, message",
    [
        ("corrupt_jpeg", "video:corrupt_image", "cannot decode image"),
        ("missing_frame", "video:missing_frame", "image file not found"),
        ("missing_mask", "video:missing_mask", "annotation PNG not found"),
    ],
)
def test_bad_video_files(small_ytvos, damage, kind, message):
    tmp_path, manifest = small_ytvos
    vid, frame = _first_train_frame(tmp_path, manifest)
    jpg = tmp_path / "raw/train/JPEGImages" / vid / f"{frame}.jpg"
    png = tmp_path / "raw/train/Annotations" / vid / f"{frame}.png"
    if damage == "corrupt_jpeg":
        jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 3])
        bad = jpg
    elif damage == "missing_frame":
        jpg.unlink()
        bad = jpg
    else:
        png.unlink()
        bad = png
    with pytest.raises(DataError, match=message) as error:
        _build(tmp_path)
    assert str(bad) in str(error.value)
    builder = _build(tmp_path, on_error="skip")
    assert builder.skipped == {kind: 1}
    assert builder.info.metadata["skipped"]["counts"] == {kind: 1}
    kept = set()
    for split in ("train", "heldout"):
        source = builders.open_split("ref_youtube_vos", tmp_path / "tfds_skip", split)
        kept |= {decode_text(source[i]["video_id"]) for i in range(len(source))}
    assert kept == set(manifest["train"]) - {vid}


def test_malformed_json_names_file_line_and_column(small_ytvos):
    tmp_path, _ = small_ytvos
    meta = tmp_path / "raw/meta_expressions/train/meta_expressions.json"
    meta.write_text('{"videos": {\n  "abc": {"frames": ["00000"],\n   "expressions": {"0": {"exp": "x", }}}}}')
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match=r"meta_expressions\.json:3:\d+: malformed JSON") as error:
            _build(tmp_path, on_error=on_error)
        assert str(meta) in str(error.value)


def test_expression_whose_object_never_appears(small_ytvos):
    tmp_path, manifest = small_ytvos
    meta_path = tmp_path / "raw/meta_expressions/train/meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    vid = sorted(meta["videos"])[0]
    meta["videos"][vid]["expressions"]["99"] = {"exp": "the ghost on the left", "obj_id": "7"}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="object 7 never appears") as error:
        _build(tmp_path)
    assert vid in str(error.value) and "'99'" in str(error.value) and str(meta_path) in str(error.value)
    builder = _build(tmp_path, on_error="skip")
    assert builder.skipped == {"expression:object_never_appears": 1}
    records = []
    for split in ("train", "heldout"):
        source = builders.open_split("ref_youtube_vos", tmp_path / "tfds_skip", split)
        records += [source[i] for i in range(len(source))]
    (record,) = [r for r in records if decode_text(r["video_id"]) == vid]
    assert [decode_text(e) for e in record["expressions"]["exp_id"]] == list(manifest["train"][vid]["expressions"])


def test_refcoco_missing_image_is_skipped_or_named(tmp_path):
    manifest = synthetic.write_refcoco(tmp_path / "raw", "refcoco", num_images=5, size=(24, 32), seed=1)
    entry = next(iter(manifest["splits"]["train"].values()))
    missing = tmp_path / "raw/train2014" / entry["file_name"]
    os.remove(missing)
    with pytest.raises(DataError, match="image file not found") as error:
        _build(tmp_path, "refcoco/refcoco")
    assert str(missing) in str(error.value)
    builder = _build(tmp_path, "refcoco/refcoco", on_error="skip")
    assert builder.skipped == {"image:missing_frame": 1}
    assert builder.info.splits["train"].num_examples == len(manifest["splits"]["train"]) - 1


def test_davis_expression_count_must_be_a_multiple_of_four(tmp_path):
    synthetic.write_ref_davis17(tmp_path / "raw", num_videos=1, num_frames=2, size=(24, 32), seed=2, num_train_videos=0)
    meta_path = tmp_path / "raw/meta_expressions/valid/meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    (video,) = meta["videos"].values()
    video["expressions"].pop(str(len(video["expressions"]) - 1))
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="expected 4 per object"):
        _build(tmp_path, "ref_davis17")


def test_a_build_from_changed_raw_files_is_refused_then_rebuilt(small_ytvos):
    """A skip-build keeps reporting its skips when reused; fixing the raw files makes the build stale (an
    error naming the fix) until `rebuild=True`, which then has the fixed video."""
    tmp_path, manifest = small_ytvos
    vid, frame = _first_train_frame(tmp_path, manifest)
    jpg = tmp_path / "raw/train/JPEGImages" / vid / f"{frame}.jpg"
    good = jpg.read_bytes()
    jpg.write_bytes(good[: len(good) // 3])
    assert _build(tmp_path, on_error="skip").skipped == {"video:corrupt_image": 1}
    assert _build(tmp_path, on_error="skip").skipped == {"video:corrupt_image": 1}  # reused, and says so
    jpg.write_bytes(good)
    with pytest.raises(DataError, match=r"was built from other raw files than .* --rebuild"):
        _build(tmp_path, on_error="skip")
    rebuilt = builders.build("ref_youtube_vos", tmp_path / "raw", tmp_path / "tfds_skip", on_error="skip",
                             rebuild=True)
    assert rebuilt.skipped == {}
    kept = set()
    for split in ("train", "heldout"):
        source = builders.open_split("ref_youtube_vos", tmp_path / "tfds_skip", split)
        kept |= {decode_text(source[i]["video_id"]) for i in range(len(source))}
    assert kept == set(manifest["train"])


def test_the_data_command_line_builds_any_heldout_split_it_names(small_ytvos):
    tmp_path, _ = small_ytvos
    result = subprocess.run([sys.executable, "-m", "refsam_jax.data", "build", "--name", "ref_youtube_vos",
                             "--manual_dir", "raw", "--data_dir", "tfds", "--heldout_fraction", "0.5",
                             "--heldout_seed", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "heldout_0p5_seed_3" in json.loads(result.stdout.splitlines()[-1])["data_path"]
    config = builders.RefYoutubeVosConfig(name="heldout_0p7_seed_3", heldout_fraction=0.7, heldout_seed=3)
    with pytest.raises(FileNotFoundError, match="--heldout_fraction 0.7 --heldout_seed 3"):
        builders.open_split("ref_youtube_vos", tmp_path / "tfds", "train", config=config)
