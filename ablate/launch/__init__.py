"""The driver layer: what runs on the machine that starts a launch.

The Ray session and its checks (``local_ray``, ``preflight``, ``ray_internals``), the driver of
grids, searches, confirms and resumes (``driver``), seed waves (``replicate``), the searcher
(``searcher``), the live view and end states (``callbacks``) and signal handling
(``interrupts``). It is handed the trainable and the reports it runs (:class:`job.Job`), so it
never imports ``trainables/`` or ``dashboards/``.
"""
