"""Run records, loggers fitted to a run dir, comparing runs, sweeps (import the module you need: `compare` must not
wait for Lightning to import)."""
