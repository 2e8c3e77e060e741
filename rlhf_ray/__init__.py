"""RLHF (PPO) with quantized LoRA models on Ray."""

from rlhf_ray import noise as _noise

_noise.install()  # before ray or bitsandbytes can log (see rlhf_ray.noise)
