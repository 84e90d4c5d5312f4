"""LoRA adapters learned from reader feedback: training data export, training, the evaluation gate and the
versioned registry that serving reads."""
