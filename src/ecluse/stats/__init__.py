"""Plain integer counters per client, server and pool, read by admin/."""
