"""An example third-party mtlbench plugin: a task, a method and a backbone."""
