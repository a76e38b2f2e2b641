"""The test scale's networks: the smallest nets every method builds with (one
downsampling), shared by the tests and by the chaos benchmark, which runs the tests' grid.

No imports: a benchmark reads it without pulling in pytest or torch."""

TINY_MODEL = {
    "sr3": {"width": 8, "mults": [1, 2], "res_blocks": 1, "attn_res": [8]},
    "coarse_to_fine": {
        "cpm_width": 8,
        "cpm_mults": [1, 2],
        "irm_width": 8,
        "irm_mults": [1, 2],
        "res_blocks": 1,
        "guide_channels": 8,
        "guide_levels": 1,  # one downsampling: mults [1, 2]
    },
}
