"""Local tooling: the embedded AWS emulator, the seeded sample, the demo."""
