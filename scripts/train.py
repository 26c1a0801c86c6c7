"""Train one experiment; resume from its checkpoint if there is one. Refuses to train where
another live job or process owns the experiment (kdflow.owner: PBS, Slurm or local)."""

from pathlib import Path

from kdflow.owner import claim
from kdflow.trainer import TrainSpec, train

params = {**snakemake.params.hparams, "threads": snakemake.threads}  # noqa: F821
train(
    TrainSpec.from_params(params),
    out_dir=Path(snakemake.output[0]).parent,  # noqa: F821
    log_path=snakemake.log[0],  # noqa: F821
    claim=claim,
)
