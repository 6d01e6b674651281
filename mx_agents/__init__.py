"""MetaAgentX agents: LLM backends, designer/executor policies, baselines, rollouts."""
