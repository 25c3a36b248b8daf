"""Small shared utilities: profiling ranges, seeding, devices."""
