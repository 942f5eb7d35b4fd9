"""Attacks on an unlearned model (DESIGN §9) and the representation diagnostics.

registry.py  the attack registry (`relapse list attacks`); one file per attack in kinds/
stage.py     run one attack on one model cell, writing model folders the evaluate rule scores
represent.py per-layer CKA, PCA and Fisher of a model against the target and the retrain
(the reversibility verdict and the durability table: relapse.report.durability)
"""
