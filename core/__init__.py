"""procguard.core: the headless process-management API."""
