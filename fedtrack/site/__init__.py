"""Runs in a site's client, inside each job's process: the site's own MLflow receiver (receiver.py), what it
makes of an analytics event (records.py) and of the site's hardware (system.py). It writes to the spool only."""
