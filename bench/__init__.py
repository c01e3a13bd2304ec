"""Tools around forkproxy: the demo backend, `make run`, load generators and tuning."""
