"""The CUDA path of fracture.model.engine: bf16 autocast + channels_last training, input layout, predictions.

Skipped without CUDA (like nanochat's GPU tests); run on a GPU machine with `pytest -m gpu`.
"""

import copy

import numpy as np
import pytest
import torch
from batches import fixed_batches
from torch import nn

from fracture.core.config import ModelConfig, OptimConfig
from fracture.core.names import IMAGE
from fracture.model.engine import build_optimizer, predict, to_model_input, train_one_epoch
from fracture.model.network import build_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SIZE = 64
CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def base_net():
    torch.manual_seed(0)
    net, _ = build_model(ModelConfig(weights="none"))
    return net


def _batches(**kwargs):
    return fixed_batches(SIZE, **kwargs)


def test_to_model_input_on_cuda_is_channels_last_float_in_unit_range():
    images = torch.randint(0, 256, (4, SIZE, SIZE, 3), dtype=torch.uint8)
    x = to_model_input(images, CUDA)
    assert x.is_cuda and x.dtype == torch.float32 and x.shape == (4, 3, SIZE, SIZE)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.cpu(), to_model_input(images, CPU))  # same values as the CPU layout


def test_bf16_channels_last_training_lowers_the_loss(base_net):
    torch.manual_seed(0)
    net = copy.deepcopy(base_net).to(CUDA)  # whole backbone trainable: bf16 backward through every conv
    optimizer = build_optimizer(net, OptimConfig(lr_head=1e-3, lr_backbone=1e-4))
    batches = _batches()
    losses = []
    for _ in range(20):
        out = train_one_epoch(
            net, optimizer, batches, loss_fn=nn.BCEWithLogitsLoss(), penalty=net.l2_penalty, device=CUDA
        )
        losses.append(out["train_loss"])
        assert out["train_images"] == 16.0 and out["train_images_per_s"] > 0
    assert all(np.isfinite(losses)), losses
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast casts ops, not weights
    assert losses[-1] < losses[0]
    assert min(losses[-3:]) < 0.75 * losses[0], losses


def test_predict_on_cuda_matches_cpu_within_bf16_tolerance(base_net):
    batches = _batches(n_batches=2, batch_size=8, seed=1)
    cpu_net = copy.deepcopy(base_net).eval()
    with torch.no_grad():
        # A fresh head's logits barely differ between images (all probabilities ~0.49), so any
        # layout bug would pass unnoticed: stretch them to probabilities of about 0.35-0.65.
        x = torch.cat([to_model_input(b[IMAGE], CPU) for b in batches])
        cpu_net.fc2.weight.mul_(100.0)
        cpu_net.fc2.bias.sub_(cpu_net(x).median())
    cuda_net = copy.deepcopy(cpu_net).to(CUDA)
    labels_cpu, probs_cpu = predict(cpu_net, batches, CPU)  # float32, NCHW
    labels_gpu, probs_gpu = predict(cuda_net, batches, CUDA)  # bf16 autocast, channels_last
    np.testing.assert_array_equal(labels_cpu, labels_gpu)
    assert probs_gpu.dtype == np.float32 and probs_gpu.shape == probs_cpu.shape == (16,)
    assert np.ptp(probs_cpu) > 0.1, probs_cpu
    # bf16 keeps 8 bits of mantissa: emulated on CPU (torch.autocast("cpu", bfloat16)) this model's
    # probabilities move by <= 0.009, while feeding it H and W swapped moves them by ~0.09.
    np.testing.assert_allclose(probs_gpu, probs_cpu, atol=3e-2)


@pytest.mark.integration
def test_a_one_gpu_trial_trains_in_its_own_process_on_its_gpu(ray_local, tiny_config):
    """A one-worker trial runs in its Tune trial's process (session.TrialSession): Tune must reserve the
    GPU for that process, and the loop must train there, not on the CPU."""
    from fracture import study
    from fracture.data import pipeline
    from fracture.tune import search

    cfg = tiny_config("name=gpu_trial", "train.epochs=1", "cluster.use_gpu=true")
    study.preflight(cfg)
    (result,) = search.build_tuner(cfg, pipeline.build_datasets(cfg), pipeline.pos_weight(cfg), search=False).fit()
    assert result.error is None, result.error
    assert result.metrics["device"] == "cuda"
