"""RLHF (PPO) with quantized LoRA models on Ray. See docs/architecture.md for the layers.

Importing the package has no side effects; `rlhf_ray.process.set_up_process()` is called by
the CLI and by every role and stage process."""
