"""One-machine runs: the `strata` CLI, the simulation and central runners, benchmarks."""
