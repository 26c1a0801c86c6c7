"""kdflow: knowledge-distillation sweeps as a Snakemake workflow."""

__version__ = "0.1.0"
