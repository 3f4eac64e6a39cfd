"""Runs at every participant's start (the entrypoint's `fedtrack-policy`): its local policy."""
