"""Specifics of dense_unet, bcdu_net, inception_unet, unet_plus_plus and the ensemble.

The generic contract (every registered model in 2D and 3D, any input size, SegOutput) is tested in
test_models.py; here: the parts that make each variant what it is, and the survey's layouts counted
from its listings.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seg_studio.core.errors import ModelError
from seg_studio.core.models import (
    AUX_ATTENTION,
    AUX_DEEP_SUPERVISION,
    AUX_UNCERTAINTY,
    count_parameters,
    create_model,
)
from seg_studio.core.models.bcdu_net import ConvLSTM, ConvLSTMCell
from seg_studio.core.models.dense_unet import DenseBlock
from seg_studio.core.models.ensemble import Ensemble
from seg_studio.core.models.inception_unet import DenseInceptionBlock, InceptionResBlock
from seg_studio.core.models.unet_plus_plus import UNetPlusPlus

DIMS = (2, 3)


def _x(dims: int, size: int = 12, channels: int = 1, n: int = 1) -> torch.Tensor:
    return torch.randn(n, channels, *([size] * dims))


def _conv(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


# --- UNet++ ---------------------------------------------------------------------------------------


def test_unet_plus_plus_reference_count_is_the_surveys() -> None:
    with torch.device("meta"):  # counts only: no memory, no initialisation
        model = create_model("unet_plus_plus", 2, in_channels=3, out_channels=1, preset="reference")
    assert count_parameters(model) == 36_629_633


@pytest.mark.parametrize("dims", DIMS)
def test_unet_plus_plus_heads_at_input_size(dims: int) -> None:
    model = create_model("unet_plus_plus", dims, 1, 3, features=4, depth=3).eval()
    x = _x(dims, 11)  # not a multiple of 8: padded and cropped back
    out = model(x, aux=[AUX_DEEP_SUPERVISION])
    heads = out.aux[AUX_DEEP_SUPERVISION]
    assert len(heads) == 2  # X0,1 and X0,2; X0,3 is the logits
    for h in heads:
        assert h.shape == out.logits.shape == (1, 3, *([11] * dims))
    assert not torch.allclose(heads[0], heads[1])
    assert AUX_DEEP_SUPERVISION not in model(x).aux


@pytest.mark.parametrize("dims", DIMS)
def test_unet_plus_plus_pruned_output_equals_its_head(dims: int) -> None:
    model = create_model("unet_plus_plus", dims, 1, 2, features=4, depth=3).eval()
    x = _x(dims, 10)
    with torch.no_grad():
        full = model(x, aux=True)
        for level in (1, 2):
            model.prune(level)
            pruned = model(x, aux=True)
            torch.testing.assert_close(pruned.logits, full.aux[AUX_DEEP_SUPERVISION][level - 1])
            assert len(pruned.aux[AUX_DEEP_SUPERVISION]) == level - 1
        model.prune(None)
        torch.testing.assert_close(model(x).logits, full.logits)


def test_unet_plus_plus_pruning_skips_the_deeper_nodes() -> None:
    model = create_model("unet_plus_plus", 2, 1, 2, features=4, depth=4, prune_level=2).eval()
    assert model.inference_level == 2
    ran: set[str] = set()
    for name, node in model.nodes.items():
        node.register_forward_hook(lambda *_a, name=name: ran.add(name))
    model(_x(2, 16))
    assert ran == {"x0_0", "x1_0", "x2_0", "x0_1", "x1_1", "x0_2"}  # i + j <= 2: 6 of 15 nodes


def test_unet_plus_plus_without_heads_cannot_prune() -> None:
    model = create_model("unet_plus_plus", 2, 1, 2, features=4, depth=3, deep_supervision=False).eval()
    assert set(model.heads) == {"3"}
    with pytest.raises(ModelError, match="no head at level 2"):
        model.prune(2)
    with pytest.raises(ModelError, match="1..3"):
        model.prune(4)
    assert model(_x(2, 8), aux=True).aux[AUX_DEEP_SUPERVISION] == []
    with pytest.raises(ModelError):
        create_model("unet_plus_plus", 2, 1, 2, features=4, deep_supervision=False, combine="mean")


def test_unet_plus_plus_mean_combines_all_heads() -> None:
    torch.manual_seed(1)
    final = create_model("unet_plus_plus", 2, 1, 2, features=4, depth=2).eval()
    mean = create_model("unet_plus_plus", 2, 1, 2, features=4, depth=2, combine="mean").eval()
    mean.load_state_dict(final.state_dict())
    x = _x(2, 8)
    with torch.no_grad():
        out = final(x, aux=True)
        expected = (out.aux[AUX_DEEP_SUPERVISION][0] + out.logits) / 2
        torch.testing.assert_close(mean(x).logits, expected)


def test_unet_plus_plus_pruning_is_configuration_not_call_state() -> None:
    model = UNetPlusPlus(2, 1, 2, features=4, depth=2)
    keys = set(model.__dict__)
    model(_x(2, 8), aux=True)
    model(_x(2, 8))
    assert set(model.__dict__) == keys


# --- BCDU-Net and its ConvLSTM -------------------------------------------------------------------


def _lstm_step_by_hand(cell: ConvLSTMCell, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    gates = conv(x, cell.input_conv.weight, cell.input_conv.bias, padding=1)
    gates = gates + conv(h, cell.hidden_conv.weight, None, padding=1)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.parametrize("dims", DIMS)
def test_convlstm_cell_follows_the_lstm_equations(dims: int) -> None:
    cell = ConvLSTMCell(dims, cin=3, hidden=4)
    x1, x2 = _x(dims, 6, channels=3), _x(dims, 6, channels=3)
    zero = torch.zeros(1, 4, *([6] * dims))
    with torch.no_grad():
        h1, c1 = cell(x1)  # zero state: the hidden conv is skipped
        eh1, ec1 = _lstm_step_by_hand(cell, x1, zero, zero)
        torch.testing.assert_close(h1, eh1)
        torch.testing.assert_close(c1, ec1)
        h2, c2 = cell(x2, (h1, c1))
        eh2, ec2 = _lstm_step_by_hand(cell, x2, eh1, ec1)
        torch.testing.assert_close(h2, eh2)
        torch.testing.assert_close(c2, ec2)
    assert h2.shape == (1, 4, *([6] * dims))


@pytest.mark.parametrize("dims", DIMS)
def test_bidirectional_convlstm_reads_both_ways(dims: int) -> None:
    lstm = ConvLSTM(dims, cin=2, hidden=3, bidirectional=True)
    skip, up = _x(dims, 5, channels=2), _x(dims, 5, channels=2)
    with torch.no_grad():
        out = lstm([skip, up])
        fwd = lstm.forward_cell(up, lstm.forward_cell(skip))[0]
        bwd = lstm.backward_cell(skip, lstm.backward_cell(up))[0]
    assert lstm.out_channels == 6
    torch.testing.assert_close(out, torch.cat([fwd, bwd], dim=1))
    backward_only = ConvLSTM(dims, cin=2, hidden=3, bidirectional=False)
    assert backward_only.out_channels == 3 and backward_only.forward_cell is None


@pytest.mark.parametrize("dims", DIMS)
def test_bcdu_output_depends_on_skip_and_decoder(dims: int) -> None:
    model = create_model("bcdu_net", dims, 1, 2, features=4, depth=2).eval()
    x = _x(dims, 8).requires_grad_(True)
    model(x).logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # every ConvLSTM cell of every level takes part
    for lstm in model.lstm:
        for cell in (lstm.forward_cell, lstm.backward_cell):
            assert cell.input_conv.weight.grad is not None and cell.input_conv.weight.grad.abs().sum() > 0


def test_bcdu_dense_bottleneck_concatenates_earlier_units() -> None:
    model = create_model("bcdu_net", 2, 1, 2, features=4, depth=2, dense_units=3)
    ins = [unit[0][0].in_channels for unit in model.bottleneck.units]
    assert ins == [8, 16, 32]  # D1 <- level 1 (8); D2 <- D1 (16); D3 <- D2 ++ D1 (32)


def test_bcdu_reference_is_the_survey_listing() -> None:
    """BCDU_net_D3 of the survey, counted layer by layer (Keras trainable parameters)."""
    expected = sum(
        _conv(3, a, b) for a, b in [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    )
    expected += (
        _conv(3, 256, 512) + 3 * _conv(3, 512, 512) + _conv(3, 1024, 512) + _conv(3, 512, 512)
    )  # D1-D3
    for deep, w in [(512, 256), (256, 128), (128, 64)]:
        expected += _conv(2, deep, w) + 2 * w  # Conv2DTranspose + BatchNormalization
        f = w // 2
        expected += 9 * w * 4 * f + 9 * f * 4 * f + 4 * f  # ConvLSTM2D(filters=w/2)
        expected += _conv(3, f, w) + _conv(3, w, w)
    expected += _conv(3, 64, 2) + _conv(1, 2, 1)
    with torch.device("meta"):
        model = create_model("bcdu_net", 2, 1, 1, preset="reference")
    assert count_parameters(model) == expected == 20_658_821


# --- Inception U-Net (DIU-Net) --------------------------------------------------------------------


@pytest.mark.parametrize("dims", DIMS)
def test_inception_res_branches(dims: int) -> None:
    block = InceptionResBlock(dims, cin=3, cout=4, norm_kind="batch").eval()

    def kernels(branch: torch.nn.Module) -> list[int]:
        return [m.kernel_size[0] for m in branch.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]

    assert kernels(block.branch1) == [1]
    assert kernels(block.branch3) == [1, 3]
    assert kernels(block.branch5) == [1, 3, 3]
    assert block.merge.in_channels == 12 and block.merge.out_channels == 4
    x = _x(dims, 6, channels=3)
    # the residual: with the merge silenced the block returns relu(projection)
    with torch.no_grad():
        block.merge.weight.zero_()
        block.merge.bias.zero_()
        torch.testing.assert_close(block(x), torch.relu(block.project(x)))


def test_dense_inception_layers_grow() -> None:
    block = DenseInceptionBlock(2, cin=8, cout=16, layers=3, growth=4, norm_kind="batch")
    assert [layer.project.in_channels for layer in block.layers] == [8, 12, 16]
    assert block.transition[0].in_channels == 20
    assert block(_x(2, 6, channels=8)).shape == (1, 16, 6, 6)


def test_inception_unet_places_dense_inception_blocks() -> None:
    model = create_model("inception_unet", 2, 1, 2, features=4, depth=3, dense_layers=2, bottleneck_layers=5)
    kinds = [type(b).__name__ for b in model.encoder]
    assert kinds == ["InceptionResBlock", "InceptionResBlock", "DenseInceptionBlock"]
    assert len(model.bottleneck.layers) == 5 and len(model.encoder[2].layers) == 2
    assert type(model.decoder[0]).__name__ == "DenseInceptionBlock"  # deepest decoder level
    assert all(type(b).__name__ == "InceptionResBlock" for b in model.decoder[1:])


# --- Dense U-Net ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", DIMS)
def test_dense_block_feeds_every_unit_all_earlier_outputs(dims: int) -> None:
    block = DenseBlock(dims, cin=3, growth=4, norm_kind="batch", layers=3).eval()
    convs = [unit[2] for unit in block.units]
    assert [c.in_channels for c in convs] == [3, 7, 11]
    x = _x(dims, 5, channels=3)
    with torch.no_grad():
        x1 = block.units[0](x)
        x2 = block.units[1](torch.cat([x, x1], 1))
        x3 = block.units[2](torch.cat([x, x1, x2], 1))
        torch.testing.assert_close(block(x), x3)


def test_dense_unet_reference_is_the_surveys_layout() -> None:
    """The survey's Dense U-Net (dens_block = 3 x (BN, ReLU, 3x3 conv without bias)), counted."""

    def dens(cin: int, n: int) -> int:
        return sum(2 * (cin + k * n) + _conv(3, cin + k * n, n, bias=False) for k in range(3))

    expected = _conv(7, 3, 32, bias=False)
    cin = 32
    for w in (64, 64, 128, 256):
        expected += dens(cin, w)
        cin = w
    expected += _conv(3, 256, 512) + _conv(3, 512, 512)
    for skip, deep in ((256, 512), (128, 256), (64, 128), (64, 64)):
        expected += dens(skip + deep, skip)
    expected += _conv(7, 64, 32) + _conv(1, 32, 3)
    with torch.device("meta"):
        model = create_model("dense_unet", 2, 3, 3, preset="reference")
    assert count_parameters(model) == expected


def test_dense_unet_widths_must_match_depth() -> None:
    with pytest.raises(ModelError, match="depth \\+ 1"):
        create_model("dense_unet", 2, 1, 2, depth=3, widths=[4, 8, 16])


# --- Ensemble ---------------------------------------------------------------------------------------


def _members(dims: int, out_channels: int, n: int = 2) -> list:
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        members.append(create_model("unet", dims, 1, out_channels, features=4, depth=2).eval())
    return members


@pytest.mark.parametrize("dims", DIMS)
def test_ensemble_mean_and_uncertainty(dims: int) -> None:
    members = _members(dims, 3)
    ens = Ensemble(members).eval()
    x = _x(dims, 9)
    with torch.no_grad():
        out = ens(x, aux=[AUX_UNCERTAINTY])
        probs = torch.stack([torch.softmax(m(x).logits, 1) for m in members])
    torch.testing.assert_close(torch.softmax(out.logits, 1), probs.mean(0))
    (std,) = out.aux[AUX_UNCERTAINTY]
    torch.testing.assert_close(std, (probs[0] - probs[1]).abs() / 2)  # two members: std = half the gap
    assert std.shape == out.logits.shape == (1, 3, *([9] * dims))
    assert AUX_UNCERTAINTY not in ens(x).aux


def test_ensemble_single_channel_uses_sigmoid() -> None:
    members = _members(2, 1)
    ens = Ensemble(members).eval()
    x = _x(2, 8)
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(m(x).logits) for m in members]).mean(0)
        torch.testing.assert_close(torch.sigmoid(ens(x).logits), mean)


def test_ensemble_of_identical_members_is_certain() -> None:
    member = _members(2, 2, n=1)[0]
    ens = Ensemble([member, member]).eval()
    x = _x(2, 8)
    with torch.no_grad():
        out = ens(x, aux=True)
        torch.testing.assert_close(out.aux[AUX_UNCERTAINTY][0], torch.zeros_like(out.logits))
        torch.testing.assert_close(torch.softmax(out.logits, 1), torch.softmax(member(x).logits, 1))


def test_ensemble_pads_for_every_member_and_averages_attention() -> None:
    torch.manual_seed(0)
    a = create_model("attention_unet", 2, 1, 2, features=4, depth=2).eval()
    b = create_model("unet_plus_plus", 2, 1, 2, features=4, depth=3).eval()
    ens = Ensemble([a, b]).eval()
    assert ens.size_multiple == 8
    x = _x(2, 13)
    with torch.no_grad():
        out = ens(x, aux=[AUX_ATTENTION])
        torch.testing.assert_close(out.aux[AUX_ATTENTION][0], a(x, aux=[AUX_ATTENTION]).aux[AUX_ATTENTION][0])
    assert out.logits.shape == (1, 2, 13, 13)


def test_ensemble_refuses_mismatched_members() -> None:
    with pytest.raises(ModelError, match="member 1"):
        Ensemble([_members(2, 2, n=1)[0], _members(2, 3, n=1)[0]])
    with pytest.raises(ModelError, match="at least one"):
        Ensemble([])
    with pytest.raises(ModelError, match="trained members"):
        create_model("ensemble", 2, 1, 2)


def test_ensemble_rebuilds_from_its_config() -> None:
    specs = [
        {"architecture": "unet", "arch_args": {"features": 4, "depth": 2}},
        {"architecture": "dense_unet", "arch_args": {"features": 4, "depth": 2}},
    ]
    ens = create_model("ensemble", 2, 1, 2, members=specs).eval()
    again = create_model("ensemble", 2, 1, 2, **ens.arch_args).eval()
    again.load_state_dict(ens.state_dict())
    x = _x(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, ens(x).logits)


def test_ensemble_from_checkpoints(tmp_path) -> None:
    from seg_studio.core import checkpoint

    paths = []
    for k, member in enumerate(_members(2, 2)):
        meta = checkpoint.new_meta(
            member, "unet", {"features": 4, "depth": 2}, classes=["background", "organ"]
        )
        paths.append(checkpoint.save(tmp_path / f"m{k}.segmodel", member, meta))
    ens, meta = Ensemble.from_checkpoints(paths)
    assert meta.architecture == "ensemble" and [c.name for c in meta.classes] == ["background", "organ"]
    assert [m["hash"] for m in meta.provenance["members"]] == [checkpoint.file_hash(p) for p in paths]
    x = _x(2, 8)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(checkpoint.load(p)[0](x).logits, 1) for p in paths]).mean(0)
        torch.testing.assert_close(torch.softmax(ens(x).logits, 1), probs)
    # the ensemble is itself a checkpoint
    saved = checkpoint.save(tmp_path / "ensemble.segmodel", ens, meta)
    loaded, _ = checkpoint.load(saved)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ens(x).logits)

    other = _members(2, 2, n=1)[0]
    bad = checkpoint.new_meta(other, "unet", {"features": 4, "depth": 2}, classes=["background", "vessel"])
    bad_path = checkpoint.save(tmp_path / "other.segmodel", other, bad)
    with pytest.raises(ModelError, match="classes"):
        Ensemble.from_checkpoints([paths[0], bad_path])
