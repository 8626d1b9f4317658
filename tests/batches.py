"""Fixed, learnable training batches shared by the CPU engine tests and the GPU tests."""

import torch

from fracture.core.names import IMAGE, LABEL


def fixed_batches(size: int, n_batches: int = 2, batch_size: int = 8, seed: int = 0) -> list[dict]:
    """Fixed batches where fractures are brighter: learnable, with both classes in every batch."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        labels = torch.tensor([0, 1] * (batch_size // 2))
        base = torch.randint(0, 120, (batch_size, size, size, 3), generator=g)
        images = (base + 120 * labels.view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
        batches.append({IMAGE: images, LABEL: labels})
    return batches
