"""What a launch costs before it runs: parameter and GMAC counts, devices, benchmark records,
per-trial estimates and the printed plan (``ablate plan``, ``--dry-run``)."""
