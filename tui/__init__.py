"""procguard.tui: the Textual app on top of procguard.core."""
