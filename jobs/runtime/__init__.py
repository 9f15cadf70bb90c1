"""The Spark/Delta runtime every job shares: settings, session, table registry, run log, streams."""
