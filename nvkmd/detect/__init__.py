"""From a rescan to a plan: scan the system into a Snapshot, diff it against the last
one, decide which jobs to add and drop."""
