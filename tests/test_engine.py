"""fracture.model.engine: input conversion, a training epoch that learns, evaluation, optimizers and schedules."""

import copy

import numpy as np
import pytest
import torch
from batches import fixed_batches
from torch import nn

from fracture.core.config import ModelConfig, OptimConfig
from fracture.core.names import IMAGE, LABEL
from fracture.model.engine import (
    autocast,
    build_optimizer,
    build_scheduler,
    evaluate,
    native_bf16,
    predict,
    predict_batch,
    step_scheduler,
    to_model_input,
    train_one_epoch,
    weight_average,
)
from fracture.model.network import FractureNet, build_model

pytestmark = pytest.mark.timeout(120)

CPU = torch.device("cpu")
SIZE = 32
VAL_KEYS = {
    "val_loss",
    "val_auc",
    "val_auprc",
    "val_sensitivity",
    "val_specificity",
    "val_balanced_accuracy",
    "val_f1",
    "val_accuracy",
    "val_threshold",
    "val_images",
}


@pytest.fixture(scope="module")
def base_net() -> FractureNet:
    torch.manual_seed(0)
    net, _ = build_model(ModelConfig(weights="none"))
    return net


@pytest.fixture
def net(base_net) -> FractureNet:
    return copy.deepcopy(base_net)


def _batches(**kwargs):
    return fixed_batches(SIZE, **kwargs)


def test_to_model_input_converts_uint8_nhwc_to_float_nchw():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    images[0, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    x = to_model_input(images, CPU)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    assert x.is_contiguous()
    assert 0.0 <= x.min() and x.max() <= 1.0
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))
    torch.testing.assert_close(x, images.permute(0, 3, 1, 2).float() / 255)
    assert images.dtype == torch.uint8  # the input is not modified


def test_train_one_epoch_lowers_the_loss_on_fixed_batches(net):
    torch.manual_seed(0)
    net.set_trainable_blocks(0)
    optimizer = build_optimizer(net, OptimConfig(lr_head=1e-2, lr_backbone=1e-5))
    batches = _batches()
    losses = []
    for _ in range(15):
        out = train_one_epoch(
            net, optimizer, batches, loss_fn=nn.BCEWithLogitsLoss(), penalty=net.l2_penalty, device=CPU
        )
        losses.append(out["train_loss"])
        assert out["train_images"] == 16.0 and out["train_images_per_s"] > 0
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert min(losses[-3:]) < 0.75 * losses[0], losses


def test_train_one_epoch_updates_only_trainable_parameters(net):
    torch.manual_seed(0)
    net.set_trainable_blocks(1)
    before = copy.deepcopy(net.state_dict())
    optimizer = build_optimizer(net, OptimConfig(lr_head=1e-3, lr_backbone=1e-3))
    train_one_epoch(
        net, optimizer, _batches(n_batches=1), loss_fn=nn.BCEWithLogitsLoss(), penalty=net.l2_penalty, device=CPU
    )
    after = net.state_dict()
    assert torch.equal(before["features.0.weight"], after["features.0.weight"])  # block 1: frozen
    assert torch.equal(before["features.21.weight"], after["features.21.weight"])  # block 4: frozen
    assert not torch.equal(before["features.28.weight"], after["features.28.weight"])  # block 5
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    assert net.training


def _fc1_norm_after_training(net, l2):
    torch.manual_seed(0)
    net.l2 = l2
    net.set_trainable_blocks(0)
    optimizer = build_optimizer(net, OptimConfig(lr_head=1e-2))
    for _ in range(3):
        train_one_epoch(
            net, optimizer, _batches(n_batches=1), loss_fn=nn.BCEWithLogitsLoss(), penalty=net.l2_penalty, device=CPU
        )
    return net.fc1.weight.detach().norm().item()


def test_l2_penalty_is_applied(base_net):
    start = base_net.fc1.weight.detach().norm().item()
    plain = _fc1_norm_after_training(copy.deepcopy(base_net), l2=0.0)
    penalised = _fc1_norm_after_training(copy.deepcopy(base_net), l2=100.0)
    assert penalised < 0.5 * start
    assert penalised < 0.5 * plain


def test_train_loss_excludes_the_penalty(net):
    # The reported loss is the data term only, so it is comparable across l2 values.
    torch.manual_seed(0)
    net.set_trainable_blocks(0)
    net.eval()  # no dropout, so one forward gives the exact BCE the epoch will see first
    batch = _batches(n_batches=1)
    with torch.no_grad():
        logits = net(to_model_input(batch[0][IMAGE], CPU))
        expected = nn.functional.binary_cross_entropy_with_logits(logits, batch[0][LABEL].float().view(-1, 1))
    net.dropout.p = 0.0
    net.l2 = 1e6
    optimizer = torch.optim.SGD(net.head_parameters(), lr=0.0)
    out = train_one_epoch(
        net, optimizer, batch, loss_fn=nn.BCEWithLogitsLoss(), penalty=net.l2_penalty, device=CPU, precision="fp32"
    )
    assert out["train_loss"] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_training_precision_is_the_forward_pass_and_scoring_stays_fp32_on_cpu(net, precision):
    x = to_model_input(_batches(n_batches=1)[0][IMAGE], CPU)
    net.eval()
    with torch.no_grad(), autocast(CPU, precision):
        dtype = net.features[0](x).dtype  # the first convolution's output
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(CPU))
    assert dtype == (torch.bfloat16 if bf16 else torch.float32)
    with torch.no_grad(), autocast(CPU, "scoring"):
        assert net.features[0](x).dtype == torch.float32  # evaluation and prediction: full precision on CPU
    # Whatever the forward's precision, the loss is fp32 and training still learns.
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.head_parameters(), lr=1e-2)
    net.set_trainable_blocks(0)
    losses = [
        train_one_epoch(
            net,
            optimizer,
            _batches(),
            loss_fn=nn.BCEWithLogitsLoss(),
            penalty=net.l2_penalty,
            device=CPU,
            precision=precision,
        )["train_loss"]
        for _ in range(4)
    ]
    assert losses[-1] < losses[0], losses


def _update_norm(net, grad_clip):
    torch.manual_seed(0)
    net.set_trainable_blocks(0)
    before = [p.detach().clone() for p in net.head_parameters()]
    optimizer = torch.optim.SGD(net.head_parameters(), lr=1.0)
    out = train_one_epoch(
        net,
        optimizer,
        _batches(n_batches=1),
        loss_fn=nn.BCEWithLogitsLoss(),
        penalty=net.l2_penalty,
        device=CPU,
        grad_clip=grad_clip,
    )
    assert np.isfinite(out["train_loss"])
    return torch.sqrt(
        sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.head_parameters(), before, strict=True))
    ).item()


def test_grad_clip_bounds_the_update(base_net):
    # One SGD step with lr=1 moves the parameters by exactly the (clipped) gradient.
    clipped = _update_norm(copy.deepcopy(base_net), grad_clip=1e-3)
    unclipped = _update_norm(copy.deepcopy(base_net), grad_clip=0.0)
    assert clipped == pytest.approx(1e-3, rel=1e-3)
    assert unclipped > 10 * clipped


def test_evaluate_returns_every_metric(net):
    torch.manual_seed(0)
    batches = _batches(n_batches=2, batch_size=6)
    out = evaluate(net, batches, device=CPU)
    assert set(out) == VAL_KEYS
    assert out["val_images"] == 12.0
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values()), out
    for key in VAL_KEYS - {"val_loss", "val_images"}:
        assert 0.0 <= out[key] <= 1.0, key
    assert not net.training
    labels, probs = predict(net, batches, CPU)
    expected = nn.functional.binary_cross_entropy(
        torch.tensor(probs, dtype=torch.float64), torch.tensor(labels, dtype=torch.float64)
    )
    assert out["val_loss"] == pytest.approx(expected.item(), rel=1e-4)


def test_weighted_val_loss_is_the_training_loss_on_val(net):
    """val_loss_weighted is what BCEWithLogitsLoss(pos_weight) gives the same logits: train_loss's scale."""
    batches = _batches(n_batches=2, batch_size=6)
    out = evaluate(net, batches, device=CPU, pos_weight=4.0)
    with torch.no_grad():
        logits = torch.cat([net(to_model_input(b[IMAGE], CPU)).view(-1) for b in batches]).double()
    labels = torch.cat([b[LABEL].view(-1) for b in batches]).double()
    expected = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([4.0], dtype=torch.float64))(logits, labels)
    assert out["val_loss_weighted"] == pytest.approx(expected.item(), rel=1e-4)
    assert out["val_loss_weighted"] > out["val_loss"]


def test_evaluate_is_deterministic_and_accepts_sensitivity_threshold(net):
    batches = _batches(n_batches=1)
    a = evaluate(net, batches, device=CPU)
    b = evaluate(net, batches, device=CPU)
    assert a == b
    out = evaluate(net, batches, device=CPU, threshold="sensitivity", target_sensitivity=1.0)
    assert out["val_sensitivity"] == 1.0


def test_evaluate_on_empty_iterable_raises(net):
    with pytest.raises(ValueError, match="empty"):
        evaluate(net, [], device=CPU)


def test_predict_batch_scores_in_eval_mode_without_gradients(net):
    batches = _batches(n_batches=2, batch_size=6)
    net.train()  # dropout on: scores would change from call to call if it stayed so
    first = predict_batch(net, batches[0][IMAGE].numpy(), CPU)  # numpy, as evaluate and predict pass it
    assert not net.training
    assert first.dtype == np.float32 and first.shape == (6,)
    assert ((first > 0) & (first < 1)).all()
    np.testing.assert_array_equal(predict_batch(net, batches[0][IMAGE], CPU), first)
    labels, probs = predict(net, batches, CPU)  # predict is predict_batch per batch, concatenated
    np.testing.assert_array_equal(probs, np.concatenate([first, predict_batch(net, batches[1][IMAGE], CPU)]))
    np.testing.assert_array_equal(labels, torch.cat([b[LABEL] for b in batches]).numpy())
    assert not any(p.grad is not None for p in net.parameters())


def test_predict_on_empty_iterable_gives_empty_arrays(net):
    labels, probs = predict(net, iter(()), CPU)
    assert labels.shape == (0,) and probs.shape == (0,)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_types_and_groups(net, name, cls):
    opt = build_optimizer(net, OptimConfig(name=name, lr_head=1e-3, lr_backbone=1e-5, weight_decay=0.01))
    assert type(opt) is cls
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"head": 1e-3, "backbone": 1e-5}
    if name == "adamw":
        assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    else:
        assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)


def _tiny_optimizer():
    return torch.optim.Adam([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0}])


def test_scheduler_none():
    opt = _tiny_optimizer()
    assert build_scheduler(opt, OptimConfig(schedule="none"), epochs=5) is None
    step_scheduler(None, 0.5)
    assert opt.param_groups[0]["lr"] == 1.0


def test_scheduler_cosine_anneals_to_zero():
    opt = _tiny_optimizer()
    sched = build_scheduler(opt, OptimConfig(schedule="cosine"), epochs=4)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    lrs = []
    for _ in range(4):
        opt.step()
        step_scheduler(sched, 0.5)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == sorted(lrs, reverse=True)
    assert lrs[1] == pytest.approx(0.5) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_scheduler_plateau_halves_lr_when_auc_stalls():
    opt = _tiny_optimizer()
    sched = build_scheduler(opt, OptimConfig(schedule="plateau"), epochs=10)
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for auc in (0.6, 0.7, 0.8):  # improving: no change
        step_scheduler(sched, auc)
    assert opt.param_groups[0]["lr"] == 1.0
    for auc in (0.8, 0.8):  # patience=1: the second epoch without gain halves it
        step_scheduler(sched, auc)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_weight_average_is_the_exponential_average_of_every_steps_weights(net):
    assert weight_average(net, 0.0, CPU) is None
    torch.manual_seed(0)
    net.set_trainable_blocks(0)
    decay = 0.9
    average = weight_average(net, decay, CPU)
    optimizer = build_optimizer(net, OptimConfig(lr_head=1e-2, lr_backbone=1e-5))
    expected = net.fc1.weight.detach().clone()  # the average starts at the first step's weights, then decays
    steps = []

    def after_step():
        average.update_parameters(net)
        steps.append(net.fc1.weight.detach().clone())

    train_one_epoch(
        net, optimizer, _batches(n_batches=4), loss_fn=nn.BCEWithLogitsLoss(), penalty=net.l2_penalty,
        device=CPU, after_step=after_step,
    )  # fmt: skip
    assert len(steps) == 4
    expected = steps[0]
    for weights in steps[1:]:
        expected = decay * expected + (1 - decay) * weights
    torch.testing.assert_close(average.module.fc1.weight, expected)
    assert not torch.equal(average.module.fc1.weight, net.fc1.weight)  # it lags the raw weights


def test_weight_average_keeps_batch_norm_statistics_of_its_own():
    torch.manual_seed(0)
    net = FractureNet(hidden=8, arch="vgg16_bn")
    average = weight_average(net, 0.5, CPU)
    train_one_epoch(
        net, build_optimizer(net, OptimConfig()), _batches(n_batches=2), loss_fn=nn.BCEWithLogitsLoss(),
        penalty=net.l2_penalty, device=CPU, after_step=lambda: average.update_parameters(net),
    )  # fmt: skip
    # Averaged with the weights (use_buffers), so the average scores without re-estimating them.
    ours, raw = average.module.features[1].running_mean, net.features[1].running_mean
    assert not torch.equal(ours, raw) and not torch.equal(ours, torch.zeros_like(ours))
