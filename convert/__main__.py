"""`python -m convert ...` from the root of a clone: the same command as `python -m refsam_jax.convert ...`.

This folder is not installed (a top-level `convert` package would collide in site-packages).
"""

import sys

from refsam_jax.convert import cli

if __name__ == "__main__":
    sys.exit(cli())
