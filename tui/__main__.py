"""`python -m procguard.tui`: the same as the `procguard-tui` command."""

from procguard.tui.cli import main

main()
