"""Write the results table (mean and std over seeds) of every finished experiment."""

from kdflow.summary import write_summary

write_summary("results", csv_path=snakemake.output.csv, md_path=snakemake.output.md)  # noqa: F821
