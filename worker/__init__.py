"""The background worker: job handlers and schedules (`python -m worker`, or inside the API)."""
