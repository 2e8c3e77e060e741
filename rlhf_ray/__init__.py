"""RLHF (PPO) with quantized LoRA models on Ray. See docs/architecture.md for the layers.

Importing the package has no side effects; `rlhf_ray.process.install_log_filters()` is called by
the CLI and by every role and stage process."""
