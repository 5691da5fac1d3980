"""The loss study: `pipeline compare` (runs, engines, report, plots, bootstrap intervals)."""
