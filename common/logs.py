"""The one log line format: every process (the CLI, each DDP worker) logs alike."""

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
