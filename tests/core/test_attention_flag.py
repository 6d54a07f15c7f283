"""Which variants have attention gates to show (the panel offers attention maps for those only)."""

from __future__ import annotations

from seg_studio.core.models import makes_attention_maps


def test_only_gated_variants_make_attention_maps() -> None:
    assert makes_attention_maps("attention_unet") and makes_attention_maps("r2_attention_unet")
    for name in ("unet", "res_unet", "r2unet", "unet_plus_plus", "no_such_model"):
        assert not makes_attention_maps(name), name
    members = [{"architecture": "unet", "arch_args": {}}, {"architecture": "attention_unet", "arch_args": {}}]
    assert makes_attention_maps("ensemble", {"members": members})
    assert not makes_attention_maps("ensemble", {"members": members[:1]})
