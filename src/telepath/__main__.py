"""``python -m telepath`` runs the CLI."""

from telepath.cli.main import main

main()
