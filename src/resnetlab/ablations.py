"""The 2016 paper's ablations (its Tables 1 and 2): the variants ``resnetlab reproduce orders`` and
``shortcuts`` train, with the paper's CIFAR-10 test errors.

Plain data, free of torch, so that the command line can build its help from it at once;
``experiments.reproduce_variants`` trains them.
"""

# key, label, model options, the paper's CIFAR-10 test error (%) for ResNet-110 and for ResNet-164 (bottleneck).
ORDER_VARIANTS = [
    ("post", "original (Fig. 4a)", {"order": "post"}, "6.61", "5.93"),
    ("bn_after_add", "BN after addition (4b)", {"order": "bn_after_add"}, "8.17", "6.50"),
    ("relu_before_add", "ReLU before addition (4c)", {"order": "relu_before_add"}, "7.84", "6.14"),
    ("relu_preact", "ReLU-only pre-activation (4d)", {"order": "relu_preact"}, "6.71", "5.91"),
    ("preact", "full pre-activation (4e)", {"order": "preact"}, "6.37", "5.46"),
]
# The paper reports "fail" for a test error above 20%. Its Table 1 is on ResNet-110 only.
SHORTCUT_VARIANTS = [
    ("original", "original (Fig. 2a)", {}, "6.61", None),
    ("scale-0.5-0.5", "constant scaling, 0.5 and 0.5 (2b)", {"mixing": "scale", "scales": [0.5, 0.5]}, "12.35", None),
    ("scale-0.5-1", "constant scaling, 0.5 and 1 (2b)", {"mixing": "scale", "scales": [0.5, 1.0]}, "fail", None),
    ("gate-6", "exclusive gating, b_g = -6 (2c)", {"mixing": "gate", "gate_bias": -6.0}, "8.70", None),
    ("shortcut-gate-0", "shortcut-only gating, b_g = 0 (2d)", {"mixing": "shortcut_gate", "gate_bias": 0.0}, "12.86", None),
    ("shortcut-gate-6", "shortcut-only gating, b_g = -6 (2d)", {"mixing": "shortcut_gate", "gate_bias": -6.0}, "6.91", None),
    ("conv-shortcut", "1x1 conv shortcut (2e)", {"shortcut": "C"}, "12.22", None),
    ("dropout", "dropout shortcut, 0.5 (2f)", {"mixing": "dropout", "shortcut_dropout": 0.5}, "fail", None),
]
STUDIES = {
    "orders": ("Activation orders (He et al. 2016, Table 2)", ORDER_VARIANTS),
    "shortcuts": ("Shortcut types (He et al. 2016, Table 1)", SHORTCUT_VARIANTS),
}
