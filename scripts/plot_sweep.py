"""Write the results tables and the figures of the sweep."""

import logging
from pathlib import Path

from kdflow.summary import write_report

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
write_report("results", out_dir=Path(snakemake.output.csv).parent)  # noqa: F821
