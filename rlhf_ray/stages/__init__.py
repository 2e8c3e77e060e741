"""The recipe's stages: sft, merge, reward (classifier), ppo, and the pipeline that chains them
with a content-addressed stage cache.

May import runtime and everything below; never tools, bench or the CLI."""
