"""Model layer: quantized loading + LoRA, value head, response log-probs, adapter transfer, reward model."""
