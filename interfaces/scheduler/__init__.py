"""Scheduled jobs (APScheduler 3): thin job functions that call the core or an intake."""
