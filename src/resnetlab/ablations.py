"""The 2016 paper's ablations (its Tables 1 and 2): the variants ``resnetlab reproduce orders`` and
``shortcuts`` train, with the paper's CIFAR-10 test errors.

Plain data, free of torch, so that the command line can build its help from it at once;
``experiments.reproduce_variants`` trains them.
"""

from __future__ import annotations

from typing import NamedTuple


class Variant(NamedTuple):
    """One variant of a study, with the paper's CIFAR-10 test error (%) for it: "fail" is the paper's
    word for above 20%, None where it did not train that net."""

    key: str  # what --variants takes, and part of its runs' folder names
    label: str  # its name in reports and figures
    options: dict  # the model options that make it
    resnet110_error: str | None
    resnet164_error: str | None  # ResNet-164 of bottlenecks

    def paper_error(self, depth: int, block: str) -> str | None:
        """The paper's test error for this variant of a CIFAR net of ``depth`` layers of ``block`` blocks;
        None for a net the paper did not train in its ablations."""
        return {(110, "basic"): self.resnet110_error, (164, "bottleneck"): self.resnet164_error}.get((depth, block))


class Study(NamedTuple):
    """One of the 2016 paper's ablations: its table's title and the variants it compares."""

    title: str
    variants: list[Variant]  # the first is the original unit, which every other is drawn against


ORDER_VARIANTS = [
    Variant("post", "original (Fig. 4a)", {"order": "post"}, "6.61", "5.93"),
    Variant("bn_after_add", "BN after addition (4b)", {"order": "bn_after_add"}, "8.17", "6.50"),
    Variant("relu_before_add", "ReLU before addition (4c)", {"order": "relu_before_add"}, "7.84", "6.14"),
    Variant("relu_preact", "ReLU-only pre-activation (4d)", {"order": "relu_preact"}, "6.71", "5.91"),
    Variant("preact", "full pre-activation (4e)", {"order": "preact"}, "6.37", "5.46"),
]
# The paper's Table 1 is on ResNet-110 only.
SHORTCUT_VARIANTS = [
    Variant("original", "original (Fig. 2a)", {}, "6.61", None),
    Variant("scale-0.5-0.5", "constant scaling, 0.5 and 0.5 (2b)", {"mixing": "scale", "scales": [0.5, 0.5]}, "12.35", None),
    Variant("scale-0.5-1", "constant scaling, 0.5 and 1 (2b)", {"mixing": "scale", "scales": [0.5, 1.0]}, "fail", None),
    Variant("gate-6", "exclusive gating, b_g = -6 (2c)", {"mixing": "gate", "gate_bias": -6.0}, "8.70", None),
    Variant("shortcut-gate-0", "shortcut-only gating, b_g = 0 (2d)", {"mixing": "shortcut_gate", "gate_bias": 0.0}, "12.86", None),
    Variant("shortcut-gate-6", "shortcut-only gating, b_g = -6 (2d)", {"mixing": "shortcut_gate", "gate_bias": -6.0}, "6.91", None),
    Variant("conv-shortcut", "1x1 conv shortcut (2e)", {"shortcut": "C"}, "12.22", None),
    Variant("dropout", "dropout shortcut, 0.5 (2f)", {"mixing": "dropout", "shortcut_dropout": 0.5}, "fail", None),
]
STUDIES = {
    "orders": Study("Activation orders (He et al. 2016, Table 2)", ORDER_VARIANTS),
    "shortcuts": Study("Shortcut types (He et al. 2016, Table 1)", SHORTCUT_VARIANTS),
}


def variant_of(model_kwargs: dict) -> Variant | None:
    """The ablation variant whose options built a run (its config's ``model_kwargs``); None for any
    other net, the shortcut study's original (no options of its own) among them."""
    options = {k: v for k, v in model_kwargs.items() if k not in ("num_classes", "in_chans", "block")}
    return next((v for study in STUDIES.values() for v in study.variants if v.options and v.options == options), None)
