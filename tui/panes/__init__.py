"""procguard package."""
