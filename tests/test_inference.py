"""Video inference: chunking with a carried track state, static shapes, per-expression independence, video
reading and model loading errors. Tiny SAM (64 px) and a tiny random BERT text encoder."""

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from refsam_jax import inference
from refsam_jax.configs.demo import MINILM
from refsam_jax.evaluation import video as video_eval
from refsam_jax.model.config import default_model_config
from refsam_jax.model.refsam import build_refsam, encode_text
from refsam_jax.sam.transforms import (
    PIXEL_MEAN,
    PIXEL_STD,
    postprocess_masks,
    resize_longest_side,
    resize_shortest_side,
)
from refsam_jax.segmenter import Segmenter
from refsam_jax.text import TextEncoder, TextTokenizer, build_text_encoder, clean_caption

TEXT_WIDTH, TEXT_LENGTH = 32, 12
SENTENCES = ["a red circle on the left", "the square moving to the right", "Blue   Triangle"]


@pytest.fixture(scope="module")
def text_encoder():
    hf_config = {"model_type": "bert", "hidden_size": TEXT_WIDTH, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 64, "type_vocab_size": 2,
                 "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    model = build_text_encoder(hf_config, nnx.Rngs(0))
    return TextEncoder(model, hf_config, TextTokenizer(MINILM, TEXT_LENGTH), "tiny-bert")


def tiny_config():
    config = default_model_config()
    config.sam.model_type = "tiny"
    config.text.width = TEXT_WIDTH
    config.text.max_length = TEXT_LENGTH
    return config


@pytest.fixture(scope="module")
def model():
    model = build_refsam(tiny_config(), seed=0)
    # Training moves parameters away from their (zero) init; noise on all of them makes every path matter.
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(x.dtype),
                         nnx.state(model, nnx.Param))
    nnx.update(model, state)
    return model


@pytest.fixture(scope="module")
def segmenter(model, text_encoder):
    """The one chunking the tests share (each chunk size / expression batch compiles its own programs)."""
    return inference.VideoSegmenter(model, text_encoder, chunk_size=3, expression_batch=2)


def random_video(num_frames, height=48, width=80, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(num_frames)]


def reference_logits(model, text_encoder, frames, sentence, original_size=None):
    """The whole video in one `model(...)` call (one lax.scan), post-processed: float [T, H0, W0] (H0, W0:
    `original_size`, default the frames' size)."""
    size = model.sam.config.img_size
    ids, mask = text_encoder.tokenizer([clean_caption(sentence)])
    features, mask = encode_text(text_encoder, jnp.asarray(ids), jnp.asarray(mask), text_attention_mask=True)
    resized = np.stack([resize_longest_side(f, size) for f in frames])
    h, w = resized.shape[1:3]
    x = np.zeros((1, len(frames), size, size, 3), np.float32)
    x[0, :, :h, :w] = (resized - np.asarray(PIXEL_MEAN)) / np.asarray(PIXEL_STD)
    graphdef, state = nnx.split(model)
    low_res, _ = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))(state, jnp.asarray(x), features, mask)
    return np.asarray(postprocess_masks(low_res[0], (h, w), original_size or frames[0].shape[:2], size))


def run(segmenter, frames, sentences, chains=None):
    outputs = list(segmenter.segment(frames, sentences, chains))
    assert [t for t, _ in outputs] == list(range(len(frames)))
    return np.stack([logits for _, logits in outputs], axis=1)  # [E, T, H0, W0]


def test_chunks_with_carried_track_equal_one_call_over_the_whole_video(model, text_encoder, segmenter):
    frames = random_video(7)  # Chunks of 3 + 3 + 1 (padded); expressions in batches of 2 + 1 (padded).
    logits = run(segmenter, frames, SENTENCES)
    assert logits.shape == (3, 7, 48, 80) and logits.dtype == np.float32
    for e, sentence in enumerate(SENTENCES):
        np.testing.assert_allclose(logits[e], reference_logits(model, text_encoder, frames, sentence),
                                   atol=2e-4, rtol=1e-4)


def test_short_side_resizes_frames_first(model, text_encoder, segmenter):
    """eval.short_side (official: 360): the frames are shrunk to that short side, then SAM-resized; the
    logits come back at the frames' size."""
    frames = random_video(4)  # 48 x 80 -> 24 x 40 -> 38 x 64 (48 x 80 alone also goes to 38 x 64)
    loaded = inference.LoadedModel(model, text_encoder, ml_collections.ConfigDict({"eval": {"short_side": 24}}), 0,
                                   "test")
    shrunk = Segmenter(loaded, chunk_size=3, expression_batch=2)
    assert shrunk.runner.short_side == 24
    got = run(shrunk.runner, frames, SENTENCES[:1])[0]
    small = [resize_shortest_side(frame, 24) for frame in frames]
    assert small[0].shape == (24, 40, 3)
    expected = reference_logits(model, text_encoder, small, SENTENCES[0], original_size=(48, 80))
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)
    assert np.abs(got - run(segmenter, frames, SENTENCES[:1])[0]).max() > 1e-3
    with pytest.raises(ValueError, match="short_side must be a non-negative integer"):
        inference.VideoSegmenter(model, text_encoder, short_side=-1)


def sequential_logits(model, text_encoder, frames, sentences, chains):
    """The official Ref-DAVIS loop written out: per frame, per chain, its expressions in order, one decoder call
    each (batch 1) from the state the previous call of the chain left; post-processed: float [E, T, H0, W0]."""
    size = model.sam.config.img_size
    resized = np.stack([resize_longest_side(f, size) for f in frames])
    h, w = resized.shape[1:3]
    x = np.zeros((len(frames), size, size, 3), np.float32)
    x[:, :h, :w] = (resized - np.asarray(PIXEL_MEAN)) / np.asarray(PIXEL_STD)
    graphdef, state = nnx.split(model)
    embedding, interm = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode_frames(x))(state, jnp.asarray(x))

    @jax.jit
    def decode(state, embedding, interm, features, mask, track):
        model = nnx.merge(graphdef, state)
        return model.decode_frame(embedding, interm, *model.prompts(features, mask), mask, track)

    text = []
    for sentence in sentences:
        ids, mask = text_encoder.tokenizer([clean_caption(sentence)])
        text.append(encode_text(text_encoder, jnp.asarray(ids), jnp.asarray(mask), text_attention_mask=True))
    low_res = np.zeros((len(sentences), len(frames), 4 * embedding.shape[1], 4 * embedding.shape[2]), np.float32)
    for chain in chains:
        track = model.initial_track_state(1)
        for t in range(len(frames)):
            for e in chain:
                logits, track = decode(state, embedding[t:t + 1], [i[t:t + 1] for i in interm], *text[e], track)
                low_res[e, t] = logits[0]
    return np.asarray(postprocess_masks(jnp.asarray(low_res), (h, w), frames[0].shape[:2], size))


def test_shared_track_chains_equal_the_official_sequential_loop(model, text_encoder, segmenter):
    """chains (eval.davis_shared_track): the sentences of a chain share one track state, each decoded at every
    frame from the state the previous one left, across chunks; a chain of one is an independent expression."""
    frames = random_video(5)  # Chunks of 3 + 2 (padded); chain [1] has an absent slot.
    chains = [[2, 0], [1]]
    shared = run(segmenter, frames, SENTENCES, chains)
    np.testing.assert_allclose(shared, sequential_logits(model, text_encoder, frames, SENTENCES, chains),
                               atol=2e-4, rtol=1e-4)
    independent = run(segmenter, frames, SENTENCES)
    np.testing.assert_allclose(shared[1], independent[1], atol=2e-5)
    np.testing.assert_allclose(shared[2, 0], independent[2, 0], atol=2e-5)  # no track yet either way
    assert np.abs(shared[0, 0] - independent[0, 0]).max() > 1e-3  # sentence 0 starts from sentence 2's track
    assert np.abs(shared[2, 1:] - independent[2, 1:]).max() > 1e-3  # ... and sentence 2 from sentence 0's
    with pytest.raises(ValueError, match="must hold every sentence index 0..2 exactly once"):
        run(segmenter, frames, SENTENCES, [[0, 1], [1, 2]])


def test_track_state_crosses_chunk_boundaries(segmenter):
    frames = random_video(6)
    changed = [frames[0][::-1].copy()] + frames[1:]
    before, after = run(segmenter, frames, SENTENCES[:1]), run(segmenter, changed, SENTENCES[:1])
    assert np.abs(before[0, 5] - after[0, 5]).max() > 1e-4, "frame 5 does not see frame 0 through the track"


def test_expressions_are_independent_of_their_batch(segmenter):
    frames = random_video(4)
    together = run(segmenter, frames, SENTENCES)
    for e, sentence in enumerate(SENTENCES):  # Alone, its batch is [sentence, sentence].
        alone = run(segmenter, frames, [sentence])
        np.testing.assert_allclose(together[e], alone[0], atol=2e-5)


def test_no_recompilation_for_other_video_lengths(segmenter):
    run(segmenter, random_video(5), SENTENCES[:2])
    compiled = inference.compiled_programs()
    run(segmenter, random_video(11, seed=1), SENTENCES[:1])
    run(segmenter, random_video(2, seed=2), SENTENCES)
    assert inference.compiled_programs() == compiled
    run(segmenter, random_video(3, height=30, width=40), SENTENCES[:1])  # Another padded size: only the resize.
    assert inference.compiled_programs() == compiled + 1
    run(segmenter, random_video(3, height=57, width=90), SENTENCES[:1])  # Pads to 64 x 96, as 48 x 80 does.
    assert inference.compiled_programs() == compiled + 1


def test_bfloat16_masks_agree_with_float32(model, text_encoder, segmenter):
    frames = random_video(5)
    full = run(segmenter, frames, SENTENCES) > 0
    bf16 = build_refsam(tiny_config(), seed=0, dtype=jnp.bfloat16)  # SAM's image encoder in bfloat16
    nnx.update(bf16, nnx.state(model))
    half = run(inference.VideoSegmenter(bf16, text_encoder, chunk_size=3, expression_batch=2), frames, SENTENCES) > 0
    iou = (full & half).sum() / (full | half).sum()
    assert iou > 0.95, iou  # Measured: 0.996


MULTI_DEVICE_SCRIPT = """
import jax, numpy as np
from flax import nnx
from refsam_jax import inference
from refsam_jax.configs.demo import MINILM
from refsam_jax.model.config import default_model_config
from refsam_jax.model.refsam import build_refsam
from refsam_jax.text import TextEncoder, TextTokenizer, build_text_encoder

hf = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 64, "type_vocab_size": 2,
      "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
text = TextEncoder(build_text_encoder(hf, nnx.Rngs(0)), hf, TextTokenizer(MINILM, 12), "tiny-bert")
config = default_model_config()
config.sam.model_type, config.text.width, config.text.max_length = "tiny", 32, 12
model = build_refsam(config, seed=0)
rng = np.random.default_rng(1)
nnx.update(model, jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(x.dtype),
                               nnx.state(model, nnx.Param)))
frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(11)]
sentences = ["a red circle", "the square on the left", "a small blue triangle", "it", "the big one"]

def logits(devices, expression_batch):
    runner = inference.VideoSegmenter(model, text, chunk_size=3, expression_batch=expression_batch, devices=devices)
    return runner.chunk_size, np.stack([x for _, x in runner.segment(frames, sentences)])

chunk_one, one = logits(jax.devices()[:1], 4)
for expression_batch in (4, 3):  # expressions split over the devices, then replicated
    chunk_all, every = logits(None, expression_batch)
    print(len(jax.devices()), chunk_one, chunk_all, float(np.abs(every - one).max()))
"""


def test_all_local_devices_give_the_one_device_logits():
    """4 simulated CPU devices: frames split for the encoder, expressions for the decoder; the logits of one
    device (measured: 4e-7 apart)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in result.stdout.split("\n")[-3:-1]:
        devices, chunk_one, chunk_all, difference = line.split()
        assert (int(devices), int(chunk_one), int(chunk_all)) == (4, 3, 4)
        assert float(difference) < 1e-4, line


def test_models_of_one_architecture_share_the_programs(segmenter, text_encoder):
    run(segmenter, random_video(3), SENTENCES[:1])
    compiled = inference.compiled_programs()
    other = build_refsam(tiny_config(), seed=1)
    # On a mesh, as restored from a training checkpoint; unlike `segmenter`'s model (numpy noise added), a fresh
    # model has weakly typed scalars.
    replicated = NamedSharding(jax.make_mesh((1,), ("data",)), PartitionSpec())
    nnx.update(other, jax.tree.map(lambda x: jax.device_put(x, replicated), nnx.state(other)))
    assert any(x.aval.weak_type for x in jax.tree.leaves(nnx.state(other)))
    run(inference.VideoSegmenter(other, text_encoder, chunk_size=3, expression_batch=2), random_video(3), SENTENCES)
    assert inference.compiled_programs() == compiled


def test_segment_rejects_bad_frames_and_text(segmenter):
    frames = random_video(3) + random_video(1, height=50)
    with pytest.raises(inference.VideoInputError, match="frame 3 is 80x50"):
        run(segmenter, frames, SENTENCES[:1])
    with pytest.raises(ValueError, match="expression 1 is empty"):
        run(segmenter, random_video(2), ["a red circle", "  "])
    with pytest.raises(inference.VideoInputError, match="no frames"):
        list(segmenter.segment([], SENTENCES[:1]))


def test_text_width_must_match_the_model(model):
    class Wide:
        width, source = 48, "wide-encoder"

    with pytest.raises(ValueError, match="wide-encoder has width 48"):
        inference.VideoSegmenter(model, Wide())


def test_open_video_folder_is_sorted_and_lazy(tmp_path):
    frames = random_video(3, 20, 30)
    for name, frame in zip(["00010", "00002", "00005"], frames):
        Image.fromarray(frame).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    video = inference.open_video(str(tmp_path))
    assert video.names == ["00002", "00005", "00010"] and len(video) == 3 and video.fps is None
    read = list(video)
    np.testing.assert_array_equal(read[0], frames[1])
    (tmp_path / "00005.png").write_bytes(b"broken")
    with pytest.raises(inference.VideoInputError, match="cannot read frame .*00005.png"):
        list(video)


def test_open_video_errors(tmp_path):
    with pytest.raises(inference.VideoInputError, match="does not exist"):
        inference.open_video(str(tmp_path / "missing.mp4"))
    with pytest.raises(inference.VideoInputError, match="no frames in"):
        inference.open_video(str(tmp_path))
    (tmp_path / "clip.txt").write_text("x")
    with pytest.raises(inference.VideoInputError, match="neither a folder of frames nor a video file"):
        inference.open_video(str(tmp_path / "clip.txt"))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(inference.VideoInputError, match="cannot read video .*bad.mp4"):
        inference.open_video(str(tmp_path / "bad.mp4"))


def test_open_mp4(tmp_path):
    import imageio.v2 as imageio

    frames = [np.full((32, 48, 3), 40 * t, np.uint8) for t in range(5)]
    imageio.mimwrite(tmp_path / "clip.mp4", frames, fps=8, macro_block_size=1)
    video = inference.open_video(str(tmp_path / "clip.mp4"))
    assert video.names == ["00000", "00001", "00002", "00003", "00004"] and video.fps == 8
    read = list(video)
    assert len(read) == 5 and read[0].shape == (32, 48, 3) and read[0].dtype == np.uint8
    assert abs(float(read[3].mean()) - 120) < 6  # Lossy, but the frame order and content survive.


def test_checkpoint_location_and_config(tmp_path):
    (tmp_path / "run" / "checkpoints" / "100").mkdir(parents=True)
    assert inference.checkpoint_location(str(tmp_path / "run")) == (
        str(tmp_path / "run" / "checkpoints"), str(tmp_path / "run"))
    assert inference.checkpoint_location(str(tmp_path / "run" / "checkpoints")) == (
        str(tmp_path / "run" / "checkpoints"), str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="neither a training workdir"):
        inference.checkpoint_location(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass --config"):
        inference.training_config(None, str(tmp_path / "run"))
    (tmp_path / "run" / "config.json").write_text('{"seed": 3, "model": {"text": {"width": 8}}}')
    assert inference.training_config(None, str(tmp_path / "run")).model.text.width == 8


def save_trained(directory, model, model_config, step=7):
    """A training checkpoint (its 'trainable' and 'meta' items, what `load_trained_params` reads) of the
    Cross-Modal MLP of `model`, moved away from the model's values, saved with `model_config`."""
    import orbax.checkpoint as ocp

    from refsam_jax import checkpoint as checkpoint_lib

    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    trainable = nnx.from_flat_state([(path, variable.replace(np.asarray(variable.get_value()) + 1.0))
                                     for path, variable in params if path[0] == "resizer"])
    meta = {"model_config": model_config, "trainable_shapes": checkpoint_lib.describe_params(trainable), "step": step}
    with ocp.CheckpointManager(os.path.abspath(directory), item_handlers={
            "trainable": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}) as manager:
        manager.save(step, args=ocp.args.Composite(trainable=ocp.args.StandardSave(trainable),
                                                   meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
    return trainable


def test_a_run_saved_before_a_model_key_existed_loads_with_its_default(model, text_encoder, tmp_path, caplog):
    """A run whose config.json and checkpoint lack a model key added since (here model.dense.scale) loads, the key
    read as its default; a value that differs from the checkpoint's, or from the default the checkpoint implies,
    is still an error naming the key."""
    from refsam_jax import checkpoint as checkpoint_lib

    old = tiny_config().to_dict()
    del old["dense"]["scale"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"seed": 0, "model": old}))
    trainable = save_trained(tmp_path / "run" / "checkpoints", model, old)
    config = inference.training_config(None, str(tmp_path / "run"))
    assert config.model.dense.scale == 0.0 and config.model.to_dict() == tiny_config().to_dict()
    loaded = inference.load_model(config, str(tmp_path / "run" / "checkpoints"), text_encoder=text_encoder)
    assert loaded.step == 7
    np.testing.assert_array_equal(loaded.model.resizer.layers[0].kernel[...],
                                  trainable["resizer"]["layers"][0]["kernel"][...])
    logged = [r.getMessage() for r in caplog.records if "dense.scale" in r.getMessage()]
    assert len(logged) == 2 and all("reading them as their defaults (dense.scale=0.0)" in m for m in logged), logged

    checkpoints = str(tmp_path / "run" / "checkpoints")
    defaults = default_model_config().to_dict()
    now = tiny_config()
    now.dense.scale = 10.0  # Not the default the old run ran with.
    with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                       match=r"dense.scale: absent in the checkpoint \(saved before the key existed: its default "
                             r"0.0\), 10.0 now"):
        checkpoint_lib.load_trained_params(model, checkpoints, now.to_dict(), model_defaults=defaults)
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=r"dense.scale: absent in the checkpoint, 0.0"):
        checkpoint_lib.load_trained_params(model, checkpoints, tiny_config().to_dict())  # No defaults: no filling.
    shared = dict(old, hda=dict(old["hda"], dense_conv="shared"))  # A key the checkpoint has, with another value.
    save_trained(tmp_path / "shared", model, shared)
    with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                       match=r"another model config:\n  hda.dense_conv: 'shared' in the checkpoint, 'separate' now$"):
        checkpoint_lib.load_trained_params(model, str(tmp_path / "shared"), tiny_config().to_dict(),
                                           model_defaults=defaults)
    # Resuming training checks the checkpoint's meta the same way.
    checkpoint_lib.check_meta({"model_config": old, "trainable_shapes": {}}, tiny_config().to_dict(), {}, "resume",
                              model_defaults=defaults)


# ---------------------------------------------------------------------------------------------------------
# The evaluation protocols over built (synthetic) datasets, with a segmenter that knows the ground truth.


def frames_key(frames):
    return hashlib.md5(b"".join(np.ascontiguousarray(f).tobytes() for f in frames)).hexdigest()


class Oracle:
    """Segments with the ground truth (logit +10 inside an expression's mask, -10 outside); `wrong` sentences
    get the mask shifted down by a few pixels."""

    threshold = 0.0

    def __init__(self, items, wrong=()):
        self.masks = {(frames_key(item.frames), item.sentence): item.masks for item in items}
        self.wrong = set(wrong)
        self.chains = []  # the `chains` of every call

    def stream(self, frames, sentences, chains=None):
        self.chains.append(chains and [[sentences[e] for e in chain] for chain in chains])
        key = frames_key(frames)
        for t in range(len(frames)):
            masks = [np.roll(self.masks[key, s][t], 6, axis=0) if s in self.wrong else self.masks[key, s][t]
                     for s in sentences]
            yield t, np.where(np.stack(masks), 10.0, -10.0).astype(np.float32)


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    from refsam_jax.data import iterate_eval_videos
    from refsam_jax.data.synthetic import write_ref_davis17

    root = tmp_path_factory.mktemp("davis")
    write_ref_davis17(root / "raw", num_videos=2, num_frames=3, size=(40, 56), seed=3)
    items = list(iterate_eval_videos("ref_davis17", root / "tfds", "valid", manual_dir=root / "raw"))
    return root, items


def test_davis_protocol_scores_the_ground_truth_one(davis, tmp_path):
    root, items = davis
    result = video_eval.evaluate_davis(Oracle(items), str(root / "tfds"), str(root / "raw"), str(tmp_path / "pred"))
    summary = result.summary()
    assert summary["JF"] == 1.0 and set(summary["sets"]) == {"0", "1", "2", "3"}
    videos = sorted({item.video_id for item in items})
    assert sorted(os.listdir(tmp_path / "pred" / "2")) == videos
    assert sorted(os.listdir(tmp_path / "pred" / "2" / videos[0])) == ["00000.png", "00001.png", "00002.png"]
    # Only expression set 3 (annotator 2, full video) of one object is wrong: only set 3 loses.
    wrong = next(item for item in items if video_eval.davis_expression_set(item) == 3)
    scores = video_eval.evaluate_davis(Oracle(items, [wrong.sentence]), str(root / "tfds"), str(root / "raw"),
                                     str(tmp_path / "pred_wrong")).summary()["sets"]
    assert scores["3"]["JF"] < 1.0 and all(scores[a]["JF"] == 1.0 for a in ("0", "1", "2"))


def test_davis_shared_track_chains_an_objects_expressions_in_set_order(davis, tmp_path):
    root, items = davis
    oracle = Oracle(items)
    video_eval.evaluate_davis(oracle, str(root / "tfds"), str(root / "raw"), str(tmp_path / "pred"), max_videos=1,
                              shared_track=True)
    video = items[0].video_id
    mine = [item for item in items if item.video_id == video]
    expected = [[item.sentence for item in sorted((i for i in mine if i.obj_id == obj_id),
                                                  key=video_eval.davis_expression_set)]
                for obj_id in sorted({item.obj_id for item in mine})]
    assert oracle.chains == [expected] and all(len(chain) == 4 for chain in expected)
    video_eval.evaluate_davis(oracle, str(root / "tfds"), str(root / "raw"), str(tmp_path / "pred2"), max_videos=1)
    assert oracle.chains[-1] is None


@pytest.fixture(scope="module")
def ytvos(tmp_path_factory):
    from refsam_jax.data import iterate_eval_videos
    from refsam_jax.data.synthetic import write_ref_youtube_vos

    root = tmp_path_factory.mktemp("ytvos")
    write_ref_youtube_vos(root / "raw", num_videos=4, num_frames=3, size=(40, 56), seed=5, num_valid_videos=2,
                          num_test_videos=1)
    heldout = list(iterate_eval_videos("ref_youtube_vos", root / "tfds", "heldout", manual_dir=root / "raw"))
    return root, heldout


def test_ytvos_heldout_scores_the_ground_truth_one_and_writes_it(ytvos, tmp_path):
    from refsam_jax.evaluation.ref_ytvos import evaluate_ytvos_local

    root, heldout = ytvos
    result = video_eval.evaluate_ytvos_heldout(Oracle(heldout), str(root / "tfds"), str(tmp_path / "pred"))
    assert result.summary()["JF"] == 1.0 and result.summary()["num_expressions"] == len(heldout)
    assert evaluate_ytvos_local(str(tmp_path / "pred"), str(root / "raw")).summary()["JF"] == 1.0
    wrong = video_eval.evaluate_ytvos_heldout(Oracle(heldout, [heldout[0].sentence]), str(root / "tfds"),
                                            str(tmp_path / "pred_wrong"))
    assert wrong.expressions[0].j < 1.0 and all(e.j == 1.0 for e in wrong.expressions[1:])


def test_ytvos_valid_submission_zip(ytvos, segmenter, tmp_path):
    from refsam_jax.evaluation.ref_ytvos import check_submission_zip

    root, _ = ytvos
    loaded = inference.LoadedModel(segmenter.model, segmenter.text_encoder, None, 0, "test")
    report = video_eval.predict_ytvos_valid(Segmenter(loaded, chunk_size=3, expression_batch=2), str(root / "tfds"),
                                            str(root / "raw"), str(tmp_path), expected_num_videos=None)
    meta = root / "raw" / "meta_expressions"
    checked = check_submission_zip(str(tmp_path / "submission.zip"), str(meta / "valid" / "meta_expressions.json"),
                                   str(meta / "test" / "meta_expressions.json"),
                                   images_root=str(root / "raw" / "valid" / "JPEGImages"), expected_num_videos=None)
    assert report.num_videos == checked.num_videos == 2  # The valid meta lists 2 valid + 1 test videos.
    assert report.num_files == checked.num_files == 3 * report.num_expressions


def test_evaluate_thresholds_at_the_runs_eval_threshold_unless_given(ytvos, segmenter, tmp_path):
    from refsam_jax import evaluate
    from refsam_jax.task import refsam_config

    root, _ = ytvos
    config = refsam_config()
    config.model = tiny_config()
    config.eval.threshold = 1e9
    loaded = inference.LoadedModel(segmenter.model, segmenter.text_encoder, config, 0, "test")

    def masks(out):  # Every mask pixel of the submission zip.
        with zipfile.ZipFile(os.path.join(out, "submission.zip")) as archive:
            return np.concatenate([np.asarray(Image.open(io.BytesIO(archive.read(name)))).ravel()
                                   for name in archive.namelist() if name.endswith(".png")])

    kwargs = dict(data_dir=str(root / "tfds"), manual_dir=str(root / "raw"), chunk_size=3, expression_batch=2,
                  valid_videos=0)
    default = evaluate.evaluate(loaded, "ytvos_valid", str(tmp_path), str(tmp_path / "default"), **kwargs)
    assert default["threshold"] == 1e9 and set(np.unique(masks(tmp_path / "default"))) == {0}
    given = evaluate.evaluate(loaded, "ytvos_valid", str(tmp_path), str(tmp_path / "given"), threshold=-1e9,
                              **kwargs)
    assert given["threshold"] == -1e9 and set(np.unique(masks(tmp_path / "given"))) == {255}
