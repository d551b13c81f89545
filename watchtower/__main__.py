"""``python -m watchtower`` runs the command line."""

from .cli import main

main()
