"""Helpers for the tests, the benchmarks and ``scripts/gpu_trainer_check.sh``: tiny generated stage datasets and
minimal nnU-Net plans for models made outside ``nnUNetv2_plan_and_preprocess``. Not used by any ``kits`` command."""
