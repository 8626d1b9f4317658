"""fracture.model.network: FractureNet shape, VGG16 backbone, L2 term, parameter groups, freezing, weights."""

import copy
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from fracture.core.config import ModelConfig
from fracture.model.network import FractureNet, WeightsError, build_model, param_groups

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def base_net() -> FractureNet:
    torch.manual_seed(0)
    net, source = build_model(ModelConfig())
    assert source == "none"
    return net


@pytest.fixture
def net(base_net) -> FractureNet:
    return copy.deepcopy(base_net)  # a fresh VGG16 build costs seconds; a copy does not


@pytest.fixture(scope="module")
def reference_vgg16() -> nn.Module:
    torch.manual_seed(1)
    return torchvision.models.vgg16(weights=None)


@pytest.mark.parametrize("size", [32, 64])
def test_forward_gives_finite_n_by_1_logits(net, size):
    torch.manual_seed(0)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(3, 3, size, size))
    assert out.shape == (3, 1)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_dropout_is_active_in_train_mode_only_at_the_configured_rate(net):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    seen = []
    net.dropout.register_forward_hook(lambda _m, inputs, out: seen.append((inputs[0], out)))
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x), net(x))  # a fresh mask each pass
        net.eval()
        assert torch.equal(net(x), net(x))
    rate = ModelConfig().dropout
    before, after = seen[0]
    live = before > 0  # after the ReLU: units the mask can visibly zero
    dropped = (after[live] == 0).float().mean().item()
    assert dropped == pytest.approx(rate, abs=0.06)
    kept = after[live] != 0
    assert torch.allclose(after[live][kept], before[live][kept] / (1 - rate))  # inverted dropout: rescaled
    assert torch.equal(seen[-1][0], seen[-1][1])  # eval: the identity


def test_backbone_is_torchvision_vgg16_features(net, reference_vgg16):
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert len(net.features) == len(reference_vgg16.features) == 31
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net.features) == count(reference_vgg16.features) == 14_714_688
    # Same state-dict keys and shapes, so torchvision checkpoints load into it.
    ours = {k: v.shape for k, v in net.features.state_dict().items()}
    theirs = {k: v.shape for k, v in reference_vgg16.features.state_dict().items()}
    assert ours == theirs
    assert net.fc1.in_features == 512 and net.fc1.out_features == 128 and net.fc2.out_features == 1


def test_hidden_and_dropout_come_from_config():
    torch.manual_seed(0)
    net, _ = build_model(ModelConfig(hidden=16, dropout=0.25, l2=0.0))
    assert net.fc1.out_features == 16 and net.fc2.in_features == 16
    assert net.dropout.p == pytest.approx(0.25) and net.l2 == 0.0


def test_l2_penalty_matches_hand_computed_sum(net):
    net.l2 = 3.5e-3
    expected = 3.5e-3 * (net.fc1.weight.detach() ** 2).sum()
    assert net.l2_penalty().item() == pytest.approx(expected.item(), rel=1e-6)
    # Only the Dense kernel: not its bias, not the output layer, not the backbone.
    with torch.no_grad():
        net.fc1.bias.fill_(100.0)
        net.fc2.weight.fill_(100.0)
        net.features[0].weight.fill_(100.0)
    assert net.l2_penalty().item() == pytest.approx(expected.item(), rel=1e-6)
    grads = torch.autograd.grad(net.l2_penalty(), [net.fc1.weight, net.fc1.bias, net.fc2.weight], allow_unused=True)
    torch.testing.assert_close(grads[0], 2 * 3.5e-3 * net.fc1.weight.detach())
    assert grads[1] is None and grads[2] is None


def test_l2_penalty_is_zero_when_l2_is_zero(net):
    net.l2 = 0.0
    assert net.l2_penalty().item() == 0.0


def test_param_groups_cover_every_parameter_once(net):
    groups = param_groups(net, lr_head=1e-3, lr_backbone=1e-5)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head", "backbone"}
    assert by_name["head"]["lr"] == 1e-3 and by_name["backbone"]["lr"] == 1e-5
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in net.parameters()}, "a parameter is in no group"
    head = {id(p) for p in by_name["head"]["params"]}
    assert head == {id(p) for p in [*net.fc1.parameters(), *net.fc2.parameters()]}
    # An optimizer accepts them as they are.
    torch.optim.Adam(groups)


def _trainable_feature_indices(net):
    return sorted({int(name.split(".")[0]) for name, p in net.features.named_parameters() if p.requires_grad})


def test_set_trainable_blocks_zero_freezes_backbone_keeps_head(net):
    net.set_trainable_blocks(0)
    assert not any(p.requires_grad for p in net.features.parameters())
    assert all(p.requires_grad for p in [*net.fc1.parameters(), *net.fc2.parameters()])


def test_set_trainable_blocks_two_trains_top_two_blocks(net):
    net.set_trainable_blocks(2)
    conv_indices = [i for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)]
    assert _trainable_feature_indices(net) == [i for i in conv_indices if i >= 17] == [17, 19, 21, 24, 26, 28]
    assert all(p.requires_grad for p in net.head_parameters())


@pytest.mark.parametrize("n, trainable_convs", [(1, 3), (3, 9), (4, 11), (5, 13)])
def test_set_trainable_blocks_counts(net, n, trainable_convs):
    net.set_trainable_blocks(0)
    net.set_trainable_blocks(n)  # unfreezing after a frozen warm-up
    assert len(_trainable_feature_indices(net)) == trainable_convs


def test_frozen_backbone_gets_no_gradient(net):
    torch.manual_seed(0)
    net.set_trainable_blocks(0)
    net(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in net.features.parameters())
    assert net.fc1.weight.grad is not None and net.fc2.weight.grad is not None


def test_local_weights_file_loads_into_features(tmp_path, reference_vgg16):
    path = tmp_path / "vgg16.pth"
    torch.save(reference_vgg16.state_dict(), path)  # a full torchvision state dict, classifier included
    net, source = build_model(ModelConfig(weights=str(path)))
    assert source.startswith("file:") and source.endswith("vgg16.pth")
    ours, theirs = net.features.state_dict(), reference_vgg16.features.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_missing_weights_file_raises_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(WeightsError, match="nowhere"):
        build_model(ModelConfig(weights=str(missing)))


def test_weights_file_without_features_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsError, match=r"other\.pth lacks VGG16 feature weights"):
        build_model(ModelConfig(weights=str(path)))


def test_imagenet_without_network_raises_with_instructions(tmp_path, monkeypatch):
    # Hermetic: an empty TORCH_HOME (no cached file) and no network. Only the download is replaced,
    # so that a machine with network neither fetches 528 MB nor passes for the wrong reason.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        build_model(ModelConfig(weights="imagenet"))
    message = str(info.value)
    assert "vgg16-397923af.pth" in message
    assert "model.weights=" in message
    assert str(tmp_path / "torch_home") in message  # where it looked for the cached file


def test_vgg16_bn_matches_torchvision_and_keeps_five_blocks(tmp_path):
    torch.manual_seed(0)
    net, _ = build_model(ModelConfig(arch="vgg16_bn"))
    reference = torchvision.models.vgg16_bn(weights=None)
    ours = {k: v.shape for k, v in net.features.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.features.state_dict().items()}
    blocks = net.backbone_blocks()
    assert len(blocks) == 5 and [len(b) for b in blocks] == [8, 8, 12, 12, 12]  # conv w, b + BN w, b per layer
    groups = param_groups(net, lr_head=1e-3, lr_backbone=1e-4)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in net.parameters()}
    net.set_trainable_blocks(1)
    assert sum(p.requires_grad for p in net.features.parameters()) == 12
    # torchvision's vgg16_bn state dicts (ImageNet file or local) load into it
    path = tmp_path / "vgg16_bn.pth"
    torch.save(reference.state_dict(), path)
    loaded, source = build_model(ModelConfig(arch="vgg16_bn", weights=str(path)))
    assert source.startswith("file:")
    assert torch.equal(loaded.features[1].running_var, reference.features[1].running_var)
    plain = tmp_path / "plain.pth"  # VGG16 without BN: the layers do not line up
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), plain)
    with pytest.raises(WeightsError, match="VGG16_BN"):
        build_model(ModelConfig(arch="vgg16_bn", weights=str(plain)))


def test_frozen_batch_norm_keeps_its_statistics_in_train_mode():
    torch.manual_seed(0)
    net, _ = build_model(ModelConfig(arch="vgg16_bn"))
    net.set_trainable_blocks(1)
    frozen_bn, trained_bn = net.features[1], net.features[-3]  # first block's BN, last block's BN
    before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    net.train()
    net(torch.rand(4, 3, 32, 32))
    assert torch.equal(frozen_bn.running_mean, before[0])
    assert not torch.equal(trained_bn.running_mean, before[1])


def test_flip_tta_scores_an_image_and_its_mirror_alike_at_inference_only():
    torch.manual_seed(0)
    net = FractureNet(hidden=8, flip_tta=True).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        scored = net(x)
        torch.testing.assert_close(scored, net(x.flip(-1)))
        torch.testing.assert_close(scored, (net._logits(x) + net._logits(x.flip(-1))) / 2)
        net.train()
        net.dropout.p = 0.0
        torch.testing.assert_close(net(x), net._logits(x))  # training sees the image as it is
