"""The shipped search spaces (installed as ``ablate.search_spaces``; see ablate/shipped.py)."""
