"""Every registered U-Net variant in 2D and 3D, plus the specifics of the gated, recurrent and ResNet ones.

The generic tests are parametrized over ``list_models()``: a new variant module is tested with no extra
code. Models are tiny (``features=4``) and inputs small and odd-sized, so the padding to the model's
size multiple and the crop back are exercised on every variant.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from seg_studio.core import checkpoint
from seg_studio.core.errors import ModelError
from seg_studio.core.models import (
    AUX_ATTENTION,
    AUX_DEEP_SUPERVISION,
    count_parameters,
    create_model,
    get_spec,
    list_models,
)
from seg_studio.core.models.discriminator import PatchDiscriminator, create_discriminator
from seg_studio.core.models.recurrent import RecurrentUnit

#: The survey's layouts: (in_channels, out_channels, parameters) of the 2D ``reference`` preset.
REFERENCE_COUNTS = {
    "unet": (1, 2, 31_030_658),
    "attention_unet": (3, 1, 34_878_573),
    "r2unet": (3, 1, 39_091_393),
    "unet_plus_plus": (3, 1, 36_629_633),
}

SIZES = {2: (37, 45), 3: (19, 21, 23)}
TINY = {"features": 4}
IN_CH, OUT_CH, BATCH = 2, 3, 2

MODELS = list_models(trainable_only=True)
CASES = [pytest.param(name, dims, id=f"{name}-{dims}d") for name in MODELS for dims in get_spec(name).dims]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Tiny models gain nothing from threads, and while other jobs load the cores, OpenMP barriers make
    them 10-30x slower (measured: 3D r2unet features=4 step, 15 s with 2 threads vs 0.5 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _accepts(name: str, key: str) -> bool:
    return key in inspect.signature(get_spec(name).builder).parameters


def tiny(name: str, dims: int, **config: object) -> nn.Module:
    return create_model(name, dims, IN_CH, OUT_CH, **{**TINY, **config})


def batch(dims: int, n: int = BATCH) -> torch.Tensor:
    return torch.randn(n, IN_CH, *SIZES[dims])


def _levels_ok(maps: list[torch.Tensor], size: tuple[int, ...], n: int, channels: int | None) -> None:
    """Each map is (n, channels, *ceil(size / 2**k)) for some k, deepest (coarsest) first."""
    ks = []
    for m in maps:
        assert m.shape[0] == n
        if channels is not None:
            assert m.shape[1] == channels
        k = [k for k in range(10) if tuple(m.shape[2:]) == tuple(-(-s // 2**k) for s in size)]
        assert k, f"map of shape {tuple(m.shape)} is not the input {size} at any scale 1/2**k"
        ks.append(k[0])
    assert ks == sorted(ks, reverse=True), f"maps not deepest first: scales {ks}"


# ----------------------------------------------------------------------------------------- generic


def test_registry_lists_segmenters_only() -> None:
    names = list_models()
    assert "discriminator" not in names and "patch_discriminator" not in names
    for name in ("unet", "attention_unet", "r2unet", "recurrent_unet", "r2_attention_unet", "res_unet"):
        assert name in names


def _structure(model: nn.Module) -> dict[str, tuple]:
    """Every submodule's attribute, parameter, buffer and child names: a forward must add none."""
    return {
        prefix: (tuple(sorted(vars(m))), tuple(m._parameters), tuple(m._buffers), tuple(m._modules))
        for prefix, m in model.named_modules()
    }


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_train_step_on_odd_size(name: str, dims: int) -> None:
    model = tiny(name, dims).train()
    other = (
        (nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d)
        if dims == 2
        else (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)
    )
    assert not [m for m in model.modules() if isinstance(m, other)], (
        f"{dims}D model holds layers of the other kind"
    )
    before = _structure(model)
    out = model(batch(dims), aux=True)
    assert out.logits.shape == (BATCH, OUT_CH, *SIZES[dims])
    loss = out.logits.float().square().mean()
    for maps in out.aux.values():
        loss = loss + sum(m.float().mean() for m in maps)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters outside the graph: {unused[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)
    assert _structure(model) == before, "the forward pass stored something on the module"


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_eval_is_deterministic_and_aux_only_when_asked(name: str, dims: int) -> None:
    model = tiny(name, dims).eval()
    before = _structure(model)
    x = batch(dims)
    with torch.no_grad():
        plain = model(x)
        full = model(x, aux=True)
        only_att = model(x, aux=[AUX_ATTENTION])
        alone = model(x[1:])
    # Deterministic, independent of what else is in the batch, and of what aux was asked for.
    assert torch.equal(full.logits, plain.logits) and torch.equal(only_att.logits, plain.logits)
    torch.testing.assert_close(alone.logits, plain.logits[1:], rtol=1e-4, atol=1e-5)
    assert plain.aux == {} and alone.aux == {}
    assert set(only_att.aux) <= {AUX_ATTENTION}
    if AUX_ATTENTION in full.aux:
        maps = full.aux[AUX_ATTENTION]
        assert maps, "an attention entry must hold the gates' maps"
        _levels_ok(maps, SIZES[dims], BATCH, channels=1)
        assert all(a.min() >= 0 and a.max() <= 1 for a in maps)
    for logits in full.aux.get(AUX_DEEP_SUPERVISION, []):
        assert logits.shape == (BATCH, OUT_CH, *SIZES[dims])
    assert _structure(model) == before, "the forward pass stored something on the module"


@pytest.mark.parametrize(("name", "dims"), [c for c in CASES if _accepts(c.values[0], "deep_supervision")])
def test_deep_supervision_heads(name: str, dims: int) -> None:
    model = tiny(name, dims, deep_supervision=True).eval()
    with torch.no_grad():
        out = model(batch(dims), aux=[AUX_DEEP_SUPERVISION])
    heads = out.aux[AUX_DEEP_SUPERVISION]
    assert len(heads) >= 1
    for logits in heads:
        assert logits.shape == (BATCH, OUT_CH, *SIZES[dims]) and torch.isfinite(logits).all()
        assert not torch.allclose(logits, out.logits)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm", ["instance", "group"])
def test_norm_and_dropout_are_configurable(name: str, norm: str) -> None:
    model = tiny(name, 2, norm=norm, dropout=0.1).train()
    kinds = {type(m) for m in model.modules()}
    expected = nn.InstanceNorm2d if norm == "instance" else nn.GroupNorm
    assert expected in kinds and nn.BatchNorm2d not in kinds
    assert model(batch(2)).logits.shape == (BATCH, OUT_CH, *SIZES[2])


@pytest.mark.parametrize("name", MODELS)
def test_reference_preset_builds_in_2d_and_3d(name: str) -> None:
    spec = get_spec(name)
    assert "reference" in spec.presets
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        counts = {d: count_parameters(create_model(name, d, 3, 1, preset="reference")) for d in spec.dims}
    if 2 in counts and 3 in counts:
        assert counts[3] > counts[2]


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_parameter_counts(name: str) -> None:
    cin, cout, expected = REFERENCE_COUNTS[name]
    with torch.device("meta"):
        model = create_model(name, 2, cin, cout, preset="reference")
    assert count_parameters(model) == expected


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    """Every variant's config is JSON, its weights safetensors-friendly, and it rebuilds from the registry."""
    config = dict(TINY)
    model = tiny(name, 2).eval()
    path = checkpoint.save(tmp_path / f"{name}.segmodel", model, checkpoint.new_meta(model, name, config))
    loaded, meta = checkpoint.load(path)
    assert meta.architecture == name and meta.arch_args == config
    x = batch(2)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("name", MODELS)
def test_unknown_config_key_is_a_model_error(name: str) -> None:
    with pytest.raises(ModelError, match=name):
        create_model(name, 2, 1, 2, featurez=4)


# ------------------------------------------------------------------------------ attention gates


@pytest.mark.parametrize("name", ["attention_unet", "r2_attention_unet"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("depth", [2, 3])
def test_one_attention_map_per_decoder_level(name: str, dims: int, depth: int) -> None:
    model = tiny(name, dims, depth=depth).eval()
    with torch.no_grad():
        maps = model(batch(dims), aux=[AUX_ATTENTION]).aux[AUX_ATTENTION]
    assert len(maps) == depth
    for k, alpha in zip(reversed(range(depth)), maps, strict=True):
        assert alpha.shape == (BATCH, 1, *(-(-s // 2**k) for s in SIZES[dims]))
        assert alpha.min() >= 0 and alpha.max() <= 1
    assert maps[-1].std() > 0  # a gate that depends on the image, not a constant


def test_ungated_models_return_no_attention() -> None:
    for name in ("r2unet", "recurrent_unet", "res_unet"):
        assert AUX_ATTENTION not in tiny(name, 2).eval()(batch(2), aux=True).aux


def test_attention_gate_scales_the_skip() -> None:
    """Zeroing psi's output (alpha = sigmoid of a large negative) removes the skip's contribution."""
    model = tiny("attention_unet", 2, depth=2, norm="none").eval()
    x = batch(2)
    with torch.no_grad():
        base = model(x).logits
        for gate in model.gates:
            gate.psi[0].bias.fill_(-1e4)
        closed = model(x, aux=True)
    assert all(a.max() < 1e-6 for a in closed.aux[AUX_ATTENTION])
    assert not torch.allclose(closed.logits, base)


# ----------------------------------------------------------------------------------- recurrent


@pytest.mark.parametrize("t", [0, 1, 2, 3])
def test_recurrent_unit_applies_its_conv_t_plus_one_times(t: int) -> None:
    model = tiny("r2unet", 2, t=t, depth=2)
    calls = []
    units = [m for m in model.modules() if isinstance(m, RecurrentUnit)]
    assert len(units) == 2 * (2 * 2 + 1)  # two units per block, depth + 1 encoder + depth decoder blocks
    for unit in units:
        unit.conv.register_forward_hook(lambda *_: calls.append(1))
    model(batch(2))
    assert len(calls) == len(units) * (t + 1)


def test_recurrence_shares_weights_and_changes_the_result() -> None:
    m1, m2 = tiny("r2unet", 2, t=1).eval(), tiny("r2unet", 2, t=2).eval()
    assert count_parameters(m1) == count_parameters(m2)
    m2.load_state_dict(m1.state_dict())
    x = batch(2)
    with torch.no_grad():
        assert not torch.allclose(m1(x).logits, m2(x).logits)


def test_residual_is_what_separates_r2unet_from_recurrent_unet() -> None:
    r2, ru = tiny("r2unet", 2).eval(), tiny("recurrent_unet", 2).eval()
    assert count_parameters(r2) == count_parameters(ru)
    ru.load_state_dict(r2.state_dict())
    x = batch(2)
    with torch.no_grad():
        assert not torch.allclose(r2(x).logits, ru(x).logits)


def test_bad_recurrent_steps_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="t "):
        create_model("r2unet", 2, 1, 2, t=-1)


def test_r2_attention_reference_is_r2unet_plus_the_gates() -> None:
    with torch.device("meta"):
        r2 = count_parameters(create_model("r2unet", 2, 3, 1, preset="reference"))
        r2att = create_model("r2_attention_unet", 2, 3, 1, preset="reference")
    assert count_parameters(r2att) - r2 == sum(p.numel() for p in r2att.gates.parameters()) > 0


# -------------------------------------------------------------------------------------- ResNet


def _torchvision_features(tv: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = tv.relu(tv.bn1(tv.conv1(x)))
    outs = [x]
    x = tv.maxpool(x)
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize(("encoder", "blocks"), [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_res_unet_encoder_is_torchvision_resnet(
    tmp_path: Path, encoder: str, blocks: tuple[int, ...]
) -> None:
    tv = getattr(torchvision.models, encoder)(weights=None).eval()
    path = tmp_path / f"{encoder}.pth"
    torch.save(tv.state_dict(), path)
    model = create_model("res_unet", 2, 3, 2, features=64, encoder=encoder, encoder_weights=path).eval()
    assert tuple(len(getattr(model.encoder, f"layer{i}")) for i in range(1, 5)) == blocks
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model.encoder(x), _torchvision_features(tv, x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_res_unet_encoder_choice_changes_depth_not_widths() -> None:
    r18, r34 = tiny("res_unet", 2, encoder="resnet18"), tiny("res_unet", 2, encoder="resnet34")
    assert count_parameters(r34) > count_parameters(r18)
    assert r34.encoder.layer4[0].conv1.out_channels == r18.encoder.layer4[0].conv1.out_channels == 32
    with pytest.raises(ModelError, match="resnet50"):
        create_model("res_unet", 2, 1, 2, encoder="resnet50")


def test_res_unet_weights_adapt_to_one_channel_and_inflate_to_3d(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    rgb = tv.conv1.weight.detach()
    m2 = create_model("res_unet", 2, 1, 2, features=64, encoder_weights=path)
    torch.testing.assert_close(m2.encoder.conv1.weight, rgb.sum(1, keepdim=True))
    m3 = create_model("res_unet", 3, 1, 2, features=64, depth=2, encoder_weights=path)
    w3 = m3.encoder.conv1.weight.detach()
    assert w3.shape == (64, 1, 7, 7, 7)
    torch.testing.assert_close(w3.sum(2), rgb.sum(1, keepdim=True))
    inner = m3.encoder.layer2[1].conv2.weight.detach()
    torch.testing.assert_close(inner.sum(2), tv.layer2[1].conv2.weight.detach())
    torch.testing.assert_close(m3.encoder.layer1[0].bn1.running_var, tv.layer1[0].bn1.running_var)


def test_res_unet_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        create_model("res_unet", 2, 3, 2, features=64, encoder_weights=tmp_path / "missing.pth")
    r34 = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    with pytest.raises(ModelError, match="layer1.2"):
        create_model("res_unet", 2, 3, 2, features=64, encoder="resnet18", encoder_weights=r34)
    with pytest.raises(ModelError, match="features=64"):
        create_model("res_unet", 2, 3, 2, features=32, encoder="resnet34", encoder_weights=r34)
    pickled = tmp_path / "object.pth"
    torch.save({"conv1.weight": torch.zeros(1), "trap": _NotATensor()}, pickled)
    with pytest.raises(ModelError, match="cannot read"):
        create_model("res_unet", 2, 3, 2, features=64, encoder_weights=pickled)


class _NotATensor:
    """An arbitrary object: ``weights_only=True`` must refuse to unpickle it."""


def test_res_unet_without_normalisation_keeps_conv_biases() -> None:
    model = tiny("res_unet", 2, norm="none").train()
    assert model.encoder.conv1.bias is not None and model.encoder.layer2[0].downsample[0].bias is not None
    assert not [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model(batch(2)).logits.mean().backward()


def test_res_unet_depth_sets_the_size_multiple() -> None:
    for depth in (1, 2, 3, 4):
        assert tiny("res_unet", 2, depth=depth).size_multiple == 2 ** (depth + 1)
    with pytest.raises(ModelError, match="1 to 4"):
        create_model("res_unet", 2, 1, 2, depth=5)


# -------------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("dims", [2, 3])
def test_patch_discriminator_shapes_and_label_masks(dims: int) -> None:
    disc = create_discriminator(dims, image_channels=IN_CH, num_classes=OUT_CH, features=4, depth=3)
    assert isinstance(disc, PatchDiscriminator)
    image = batch(dims)
    labels = torch.randint(0, OUT_CH, (BATCH, *SIZES[dims]))
    onehot = torch.nn.functional.one_hot(labels, OUT_CH).movedim(-1, 1).float()
    out = disc(image, onehot)
    assert out.shape == (BATCH, 1, *(-(-s // 8) for s in SIZES[dims]))
    torch.testing.assert_close(disc(image, labels), out)
    # A segmenter's softmax goes in too, and the critic's gradient reaches the segmenter.
    seg = tiny("unet", dims)
    probs = seg(image).logits.softmax(1)
    disc(image, probs).mean().backward()
    assert all(p.grad is not None for p in seg.parameters())


def test_patch_discriminator_rejects_mismatched_masks() -> None:
    disc = create_discriminator(2, image_channels=1, num_classes=2, features=4)
    with pytest.raises(ValueError, match="does not match"):
        disc(torch.randn(1, 1, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="integer labels"):
        disc(torch.randn(1, 1, 16, 16), torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="0..1"):
        disc(torch.randn(1, 1, 16, 16), torch.full((1, 16, 16), 255))
    with pytest.raises(ModelError):
        create_discriminator(2, image_channels=1, num_classes=0)


def test_patch_discriminator_for_a_single_channel_segmenter() -> None:
    disc = create_discriminator(3, image_channels=1, num_classes=1, features=4, depth=2)
    image, labels = torch.randn(1, 1, 9, 10, 11), torch.randint(0, 3, (1, 9, 10, 11))
    out = disc(image, labels)
    assert out.shape == (1, 1, 3, 3, 3)
    torch.testing.assert_close(out, disc(image, (labels > 0).float().unsqueeze(1)))
