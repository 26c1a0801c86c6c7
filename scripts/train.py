"""Train one experiment; resume from its checkpoint if there is one. Refuses to train where
another live job or process owns the experiment (kdflow.owner: PBS, Slurm or local)."""

import logging
from pathlib import Path

from kdflow.config import TrainSpec
from kdflow.owner import claim
from kdflow.pack import log_handlers, train

sm = snakemake  # noqa: F821
logging.basicConfig(level=logging.INFO, handlers=log_handlers(sm.log[0]), force=True)
spec = TrainSpec.from_params({**sm.params.hparams, "threads": sm.threads})
train(spec, out_dir=Path(sm.output[0]).parent, claim=claim)
