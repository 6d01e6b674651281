"""MetaAgentX training: rollouts -> transitions -> advantages -> policy updates."""
