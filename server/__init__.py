"""The server side: Flower ServerApp, aggregation strategy, checkpoints, model export."""
