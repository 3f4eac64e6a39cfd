"""fedtrack: the vetted runtime installed in the FLARE image, laid out by where each part runs.

Imports nothing heavy here: the host's compose generator reads fedtrack.project with PyYAML alone.
"""
