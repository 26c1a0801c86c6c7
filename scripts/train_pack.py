"""Train a pack: every distilled student of one (dataset, teacher, seed) in one process, with one
teacher forward per batch (kdflow.pack, docs/PACKS.md). Each student resumes from its own
checkpoint, writes its own files and log; one that fails stops no other, and the job fails
once the others have finished."""

from pathlib import Path

from kdflow.owner import claim
from kdflow.pack import train_pack
from kdflow.trainer import TrainSpec

threads = snakemake.threads  # noqa: F821
specs = [
    TrainSpec.from_params({**params, "threads": threads})
    for params in snakemake.params.hparams  # noqa: F821
]
train_pack(
    specs,
    out_dirs=[Path(output).parent for output in snakemake.output],  # noqa: F821
    log_path=snakemake.log.pack,  # noqa: F821
    student_logs=list(snakemake.log.students),  # noqa: F821
    claim=claim,
)
