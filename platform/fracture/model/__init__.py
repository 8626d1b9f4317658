"""The network, its checkpoint format, and the training and inference steps: plain PyTorch, no Ray."""
