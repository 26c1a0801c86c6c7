"""Download (if missing), read and cache one dataset as a single uint8 array file."""

import logging
from pathlib import Path

from kdflow.data import prepare

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
out = Path(snakemake.output[0])  # noqa: F821
prepare(snakemake.wildcards.dataset, raw_root=out.parent / "raw", out_path=out)  # noqa: F821
