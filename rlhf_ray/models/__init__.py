"""Models: quantized load + LoRA, value head, forward/log-probs, sampling, adapters (export,
import, merge), random-weight shapes and tiny test models, and the resolution of model references
to local directories (`assets`); transformers' load report held back for an expected fresh
classification head (`loading`).

May import: algo, errors, batch, process, store, config, data."""
