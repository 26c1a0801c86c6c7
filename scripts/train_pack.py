"""Train a pack: every distilled student of one (dataset, teacher, student, seed) in one process,
with one teacher forward per batch (kdflow.pack, docs/PACKS.md). Each student resumes from its
own checkpoint, writes its own files and log; one that fails stops no other, and the job fails
once the others have finished."""

import logging
from pathlib import Path

from kdflow.config import TrainSpec
from kdflow.owner import claim
from kdflow.pack import log_handlers, train_pack

sm = snakemake  # noqa: F821
out_dirs = [Path(output).parent for output in sm.output]
handlers = log_handlers(sm.log.pack, dict(zip(out_dirs, sm.log.students, strict=True)))
logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
specs = [TrainSpec.from_params({**params, "threads": sm.threads}) for params in sm.params.hparams]
train_pack(specs, out_dirs, claim=claim)
