"""What the terminal shows: results tables (table), the sweep's progress (progress), --summary (summary)."""
