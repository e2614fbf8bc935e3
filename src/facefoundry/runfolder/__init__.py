"""The run folder: its record (``run.json``), lock, facts read back, verification, repair and logs."""
