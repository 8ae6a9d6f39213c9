"""The running service: start-up and shutdown, the queue loop, health, the Dask cluster."""
