"""The worker's benchmarks, side by side with scanpy on the same generated data:
`python -m benchmarks --tier tiny|small|medium|large` (see README.md)."""
