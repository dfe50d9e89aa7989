"""Exports a trained run as one self-contained folder that `refsam_jax.load` reads on any machine.

    python -m refsam_jax.export --workdir runs/demo --out exported/demo [--dtype bfloat16]

The folder (see `refsam_jax.segmenter`): `export.json`, `config.json` (the run's config with every path
removed: the model's files are the folder's), `model/` (the whole RefSAM state at the latest checkpoint:
SAM with the trained weights merged, the new modules; stored in `--dtype`, computed in float32 after
loading) and `text/` (the text encoder and its tokenizer files).
"""

import json
import os

import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import flags
from flax import nnx

from refsam_jax import cli, inference, paths, segmenter
from refsam_jax.text.encoder import save_text_encoder
from refsam_jax.trees import cast_floating

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or its checkpoints folder).")
_OUT = flags.DEFINE_string("out", None, "New folder for the export.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Storage dtype of the weights.")
flags.mark_flags_as_required(["workdir", "out"])


def export(workdir: str, out: str, dtype: str = "float32") -> str:
    """Writes the export of the latest checkpoint of `workdir` to the new folder `out`; returns `out`."""
    workdir, out = paths.absolute(workdir), paths.absolute(out)
    if os.path.exists(out) and os.listdir(out):
        raise FileExistsError(f"export folder {out} exists and is not empty")
    checkpoint_dir, run_dir = inference.checkpoint_location(workdir)
    config = inference.training_config(None, run_dir)
    loaded = inference.load_model(config, checkpoint_dir)
    state = cast_floating(nnx.state(loaded.model), {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype])
    os.makedirs(out, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(out, segmenter.MODEL_DIR), state)
        checkpointer.wait_until_finished()
    save_text_encoder(loaded.text_encoder.model, config.model.text.encoder, os.path.join(out, segmenter.TEXT_DIR))
    portable = paths.without_paths(config.copy_and_resolve_references())
    with portable.unlocked():
        portable.model.text.encoder = segmenter.TEXT_DIR
    with open(os.path.join(out, segmenter.CONFIG_FILE), "w") as f:
        f.write(portable.to_json_best_effort(indent=2))
    with open(os.path.join(out, segmenter.EXPORT_FILE), "w") as f:
        json.dump({"format": segmenter.EXPORT_FORMAT, "step": loaded.step, "source": loaded.source,
                   "dtype": dtype}, f, indent=2)
    return out


def main(argv):
    del argv  # cli.run rejects extra arguments.
    out = export(_WORKDIR.value, _OUT.value, _DTYPE.value)
    print(f"exported {paths.absolute(_WORKDIR.value)} to {out}")


if __name__ == "__main__":
    cli.run(main)
