"""Evaluation (DESIGN §8): a metric registry and a batched generation engine; the bootstrap
statistics it shares with the report live below both, in relapse.stats."""
