"""Evaluation (DESIGN §8): a metric registry, one file per metric family in metrics/. The batched
generation engine lives below, in relapse.models.generation (the data stage's world-fact probe
uses it too); the bootstrap statistics it shares with the report in relapse.stats."""
