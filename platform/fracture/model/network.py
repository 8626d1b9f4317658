"""FractureNet: torchvision VGG16 features + the seed notebook's head, in plain PyTorch.

Seed head (Keras): GlobalAveragePooling2D -> Dense(128, relu, kernel_regularizer=l2(l2))
-> Dropout(0.5) -> Dense(1, sigmoid). Here the sigmoid lives in the loss (BCE-with-logits), and
Keras' L2 kernel regulariser is reproduced exactly as an added loss term `l2 * sum(fc1.weight**2)`
on the Dense kernel only: optimizer weight decay would also shrink biases and the backbone, and for
Adam it is not even equivalent (it is scaled by the adaptive step).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fracture.core.config import ModelConfig
from fracture.core.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = ("vgg16", "vgg16_bn")


class WeightsError(UserError, RuntimeError):
    """Pretrained weights that cannot be had; the message says which file and how to pass one."""


class FractureNet(nn.Module):
    """VGG16 conv features -> GAP -> Linear(512, hidden) + ReLU -> Dropout -> Linear(hidden, 1).

    Takes images as float tensors in [0, 1], shape (N, 3, H, W); ImageNet normalisation is a
    buffer of the model so that training, evaluation and prediction cannot drift apart.
    """

    def __init__(
        self, *, hidden: int = 128, dropout: float = 0.5, l2: float = 1e-3, arch: str = "vgg16", flip_tta: bool = False
    ):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        if arch not in ARCHS:
            raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
        self.arch = arch
        # Part of the model, not of one inference path: validation, evaluate, predict and the
        # registered MLflow model then all score the same way.
        self.flip_tta = flip_tta
        # VGG16's conv stack ("D") alone, initialised as torchvision does: building all of vgg16()
        # would also initialise its 124M-parameter classifier only to throw it away (~1 s each time).
        self.features = make_layers(cfgs["D"], batch_norm=arch == "vgg16_bn")
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(512, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 1)
        self.l2 = l2
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta and not self.training:
            # Left and right limbs are mirror images: a fracture is the same fracture mirrored.
            return (self._logits(x) + self._logits(x.flip(-1))) / 2
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.features(x)  # (N, 512, H/32, W/32)
        x = self.pool(x).flatten(1)  # (N, 512)
        x = self.dropout(torch.relu(self.fc1(x)))  # (N, hidden)
        return self.fc2(x)  # (N, 1) logits

    def train(self, mode: bool = True) -> FractureNet:
        super().train(mode)
        for m in self.features:
            if mode and isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
                m.eval()  # a frozen block keeps its (pretrained) batch statistics, not just its weights
        return self

    def l2_penalty(self) -> torch.Tensor:
        return self.l2 * self.fc1.weight.square().sum()

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.fc1.parameters(), *self.fc2.parameters()]

    def backbone_blocks(self) -> list[list[nn.Parameter]]:
        """The 5 VGG16 conv blocks' parameters, bottom (block 1) to top (block 5); each block ends in a MaxPool."""
        blocks, current = [], []
        for layer in self.features:
            current.extend(layer.parameters())
            if isinstance(layer, nn.MaxPool2d):
                blocks.append(current)
                current = []
        return blocks

    def set_trainable_blocks(self, n: int) -> None:
        """Train the top `n` conv blocks (0 = frozen backbone, head only); the head always trains."""
        for i, block in enumerate(self.backbone_blocks()):
            for p in block:
                p.requires_grad_(i >= 5 - n)


def _load_pretrained(net: FractureNet, weights: str) -> str:
    """Fill net.features from ImageNet or a local file; return a description for the run record."""
    if weights == "imagenet":
        from torchvision.models import VGG16_BN_Weights, VGG16_Weights

        spec = VGG16_BN_Weights.IMAGENET1K_V1 if net.arch == "vgg16_bn" else VGG16_Weights.IMAGENET1K_V1
        try:
            state = spec.get_state_dict(progress=False)
        except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "not cached, no network"
            from torch.hub import get_dir

            cached = Path(get_dir()) / "checkpoints" / Path(spec.url).name
            raise WeightsError(
                f"cannot download ImageNet weights ({type(exc).__name__}); expected them cached at {cached}. "
                f"Copy {Path(spec.url).name} there (or set TORCH_HOME), or pass a local file with "
                f"model.weights=/path/to/{Path(spec.url).name}, or model.weights=none to train from scratch."
            ) from None
        source = f"imagenet:{Path(spec.url).name}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights: no such file {path} (use imagenet, none, or a .pth path)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = f"file:{path.resolve()}"
    # Accept a full torchvision vgg16 state dict ("features.0.weight", "classifier...") or one of ours.
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    try:
        missing, _ = net.features.load_state_dict(features, strict=False)
    except RuntimeError as exc:  # shape mismatch: not VGG16 weights
        raise WeightsError(
            f"model.weights: {source} does not fit {net.arch.upper()} features ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if missing:
        raise WeightsError(f"model.weights: {source} lacks {net.arch.upper()} feature weights such as {missing[0]}")
    return source


def build_model(cfg: ModelConfig) -> tuple[FractureNet, str]:
    """Build FractureNet and load its backbone weights.

    Returns:
        The model and a string naming the weights used ("none", "imagenet:<file>", "file:<path>").
    """
    net = FractureNet(hidden=cfg.hidden, dropout=cfg.dropout, l2=cfg.l2, arch=cfg.arch, flip_tta=cfg.flip_tta)
    source = "none" if cfg.weights in ("none", "") else _load_pretrained(net, cfg.weights)
    return net, source


def param_groups(net: FractureNet, *, lr_head: float, lr_backbone: float) -> list[dict]:
    """Optimizer groups: the head at lr_head, every backbone parameter at lr_backbone.

    All backbone parameters are in the optimizer even while frozen, so unfreezing after warm-up
    needs no new optimizer (frozen ones simply get no gradient and no update).
    """
    backbone = [p for block in net.backbone_blocks() for p in block]
    return [
        {"params": net.head_parameters(), "lr": lr_head, "name": "head"},
        {"params": backbone, "lr": lr_backbone, "name": "backbone"},
    ]
