"""The persistent, de-duplicated job queue."""
