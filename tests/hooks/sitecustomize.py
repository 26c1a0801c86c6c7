"""Loads kdflow_test_hooks in every interpreter that has tests/hooks on PYTHONPATH (Slurm jobs
inherit the test's environment); see that module."""

import kdflow_test_hooks  # noqa: F401
