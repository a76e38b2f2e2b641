"""The shipped benchmark records the planner reads (installed as ``ablate.benchmark_records``;
see ablate/shipped.py)."""
