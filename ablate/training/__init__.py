"""The worker layer: one trial, Ray-free, as it runs inside a Ray worker.

The trial's run (``trial``: splits, EMA, checkpoints), its evaluation (``evaluation``), the EMA
weights (``ema``), RNG seeding and capture (``seeding``), the progress side channel to the
driver (``progress``) and what a launch hands each trial (``context``). ``trainables/`` wraps
it for Ray Tune; the driver layer above only builds the context and reads progress.
"""
