"""Task families, one folder each. Importing a task's module registers it."""
