"""Speed, memory, scaling and quality measurements (outside test collection)."""
