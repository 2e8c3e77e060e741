"""Models: quantized load + LoRA, value head, forward/log-probs, sampling, adapters (export,
import, merge), random-weight shapes and tiny test models, and the resolution of model references
to local directories (`assets`).

May import: algo, errors, batch, process, store, config, data."""
