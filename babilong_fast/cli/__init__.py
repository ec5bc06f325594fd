"""The ``babilong-fast`` command line: :func:`babilong_fast.cli.main.main` (not imported here, so that
``python -m babilong_fast.cli.main`` runs without a double import)."""
