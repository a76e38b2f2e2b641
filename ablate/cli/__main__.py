"""``python -m ablate.cli``: what ``ray job submit ... -- python -m ablate.cli run ...`` runs."""

from ablate.cli import app

app()
