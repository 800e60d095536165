"""``python -m gss`` is the ``gss`` command."""

from gss.cli import main

main()
