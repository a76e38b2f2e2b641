"""The ``ablate`` command line: parses arguments, calls library functions and prints.

Every user-facing error is an :class:`ablate.errors.UserError` (or a
:class:`ablate.config.ConfigError`) and is printed as one red line with exit code 2,
never as a traceback (:func:`ablate.cli.app.friendly_errors`).

The commands live by what they do: :mod:`~ablate.cli.launching` (plan, run, search, resume,
status, demo), :mod:`~ablate.cli.reports` (results, table, count, dashboard, ui, export,
predict, evaluate) and :mod:`~ablate.cli.datasets` (``ablate data ...``). They are registered
here, in the order ``ablate --help`` lists them.
"""

from ablate.cli import datasets, launching, reports
from ablate.cli.app import app, data_app
from ablate.cli.launching import standard_job

for command in (
    launching.plan,
    launching.run,
    launching.search,
    launching.resume,
    launching.status,
    reports.export,
    reports.predict,
    launching.demo,
    reports.evaluate,
    reports.results,
    reports.table,
    reports.count,
    reports.dashboard,
    reports.ui,
):
    app.command()(command)
data_app.command("simulate")(datasets.data_simulate)
data_app.command("import")(datasets.data_import)
data_app.command("info")(datasets.data_info)

__all__ = ["app", "standard_job"]
