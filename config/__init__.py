"""Settings schema, shipped defaults and logging set-up shared by every subsystem."""
