"""One file per attack; each registers itself with relapse.attacks.registry.register_attack."""
