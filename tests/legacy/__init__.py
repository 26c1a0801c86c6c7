"""kdflow 0.1's trainer and methods (src/kdflow/trainer.py and losses.py at commit 58f8877),
verbatim but for one import: the reference that tests/test_identity.py trains against, so that
a run alone under the old settings (FitNet's old form, teacher_weights: best) is shown to write
bit for bit what kdflow 0.1 wrote, on whatever machine the test runs. Never imported by kdflow."""
