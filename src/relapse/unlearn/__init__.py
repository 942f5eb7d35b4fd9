"""Unlearning (DESIGN §6): loss objectives (objectives/, built from relapse.models.losses), the method registry
(registry.py), one unlearning step (step.py: the objectives' StepContext, micro-batch
accumulation), which parameters train (restrict.py: layer restriction, SURE's saliency mask),
checkpoints and epoch selection (checkpoints.py), and the run around them (trainer.py; its
optimizer loop is relapse.models.training's)."""
