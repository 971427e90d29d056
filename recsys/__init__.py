"""Runtime package, what the serving image carries: app → pipeline → experiments → stores, models → errors, settings, features, telemetry."""
