"""Residual blocks: shapes, shortcut options, plain twins, activation order, gradient flow."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.blocks import ORDERS, BasicBlock, Bottleneck, ResidualMLPBlock, ZeroPadShortcut, make_shortcut


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
@pytest.mark.parametrize("stride", [1, 2])
def test_output_shape(block, preact, shortcut, stride):
    in_planes = 16
    m = block(in_planes, 32, stride=stride, shortcut=shortcut, preact=preact)
    y = m(torch.randn(2, in_planes, 8, 8))
    assert y.shape == (2, 32 * block.expansion, 8 // stride, 8 // stride)


def test_option_a_has_no_parameters_and_pads_zeros():
    sc = ZeroPadShortcut(4, 8, stride=2)
    x = torch.randn(1, 4, 6, 6)
    y = sc(x)
    assert n_params(sc) == 0
    assert y.shape == (1, 8, 3, 3)
    # The original channels sit in the middle, subsampled; the new ones are zero.
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :2]) == 0 and torch.count_nonzero(y[:, 6:]) == 0


def test_shortcut_options_choose_projection_where_the_paper_says():
    # Same shape: A and B are the identity (None), C projects.
    assert make_shortcut(16, 16, 1, "A", preact=False) is None
    assert make_shortcut(16, 16, 1, "B", preact=False) is None
    c = make_shortcut(16, 16, 1, "C", preact=False)
    assert isinstance(c[0], nn.Conv2d) and isinstance(c[1], nn.BatchNorm2d)
    # Shape change: A is parameter-free, B projects with BN; pre-activation projections have no BN.
    assert isinstance(make_shortcut(16, 32, 2, "A", preact=False), ZeroPadShortcut)
    b = make_shortcut(16, 32, 2, "B", preact=False)
    assert b[0].stride == (2, 2) and b[0].kernel_size == (1, 1) and isinstance(b[1], nn.BatchNorm2d)
    assert len(make_shortcut(16, 32, 2, "B", preact=True)) == 1
    with pytest.raises(ValueError):
        make_shortcut(16, 32, 2, "D", preact=False)


def _silence_branch(block: nn.Module) -> None:
    """Make the residual branch output exactly zero."""
    block.zero_init_last_bn()
    nn.init.zeros_(block.last_bn.bias)
    block.eval()


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("preact", [False, True])
def test_residual_block_falls_back_to_identity_and_plain_block_does_not(block_cls, preact):
    planes = 8
    channels = planes * block_cls.expansion
    x = torch.rand(2, channels, 5, 5)  # non-negative, so the post-activation ReLU keeps it
    residual = block_cls(channels, planes, preact=preact)
    plain = block_cls(channels, planes, preact=preact, residual=False)
    _silence_branch(residual)
    _silence_branch(plain)
    with torch.no_grad():
        assert torch.allclose(residual(x), x)
        assert torch.count_nonzero(plain(x)) == 0
    assert plain.downsample is None


def test_plain_twin_has_the_same_layers_without_shortcut():
    res = BasicBlock(16, 32, stride=2, shortcut="B")
    plain = BasicBlock(16, 32, stride=2, residual=False)
    res_keys = {k for k in res.state_dict() if not k.startswith("downsample")}
    assert res_keys == set(plain.state_dict())


def test_post_activation_order_ends_with_relu_after_add():
    m = BasicBlock(8, 8).eval()
    with torch.no_grad():
        y = m(torch.randn(4, 8, 6, 6) * 5)
    assert y.min() >= 0  # ReLU after the addition


def test_pre_activation_order_leaves_the_sum_unrectified():
    m = BasicBlock(8, 8, preact=True).eval()
    x = -torch.rand(4, 8, 6, 6) - 1  # all negative input
    _silence_branch(m)
    with torch.no_grad():
        y = m(x)
    # Nothing after the add: the negative identity passes through untouched.
    assert torch.allclose(y, x)
    # And the branch starts with BN-ReLU: its first conv sees only non-negative values.
    seen = {}
    m.conv1.register_forward_hook(lambda mod, inp, out: seen.setdefault("in", inp[0]))
    m(torch.randn(4, 8, 6, 6))
    assert seen["in"].min() >= 0


def test_post_activation_branch_starts_with_conv():
    m = BasicBlock(8, 8)
    seen = {}
    m.conv1.register_forward_hook(lambda mod, inp, out: seen.setdefault("in", inp[0]))
    x = torch.randn(4, 8, 6, 6)
    m(x)
    assert torch.equal(seen["in"], x)


@pytest.mark.parametrize("stride_in_1x1, strides", [(True, ((2, 2), (1, 1))), (False, ((1, 1), (2, 2)))])
def test_bottleneck_stride_placement(stride_in_1x1, strides):
    m = Bottleneck(64, 16, stride=2, stride_in_1x1=stride_in_1x1)
    assert (m.conv1.stride, m.conv2.stride) == strides


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_zero_init_residual_starts_the_branch_at_zero_and_keeps_the_shortcut(block, order):
    """Whatever the order, the branch F(x) reaching the addition is zero and the block still passes its
    input on (with BN after the addition, zeroing that BN would zero the shortcut as well)."""
    torch.manual_seed(0)
    m = block(64, 64 // block.expansion, order=order).eval()
    m.zero_init_last_bn()
    branch = []
    m.branch_end.register_forward_hook(lambda module, inputs, output: branch.append(output))
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        out = m(x)
    assert torch.count_nonzero(branch[0]) == 0
    assert out.abs().sum() > 0 and not torch.allclose(out, m(x.flip(0)).detach())


@pytest.mark.parametrize("preact", [False, True])
def test_mlp_block(preact):
    m = ResidualMLPBlock(12, 24, preact=preact)
    assert m(torch.randn(5, 12)).shape == (5, 12)
    assert isinstance(m.fc1, nn.Linear) and m.fc1.out_features == 24
    plain = ResidualMLPBlock(12, preact=preact, residual=False)
    _ = plain(torch.randn(5, 12))


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("preact", [False, True])
def test_mlp_block_computes_its_order_and_the_plain_twin_drops_only_the_add(preact, residual):
    """Post-activation: Linear-BN-ReLU-Linear-BN, add, ReLU; pre-activation: BN-ReLU-Linear-BN-ReLU-Linear,
    add. Written out with matrix products and the batch norms' running statistics."""
    torch.manual_seed(0)
    m = ResidualMLPBlock(6, 10, preact=preact, residual=residual)
    for bn in (m.bn1, m.bn2):  # away from 0 and 1, so that each BN matters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    m.eval()

    def norm(b, h):
        return (h - b.running_mean) / (b.running_var + b.eps).sqrt() * b.weight + b.bias

    x = torch.randn(4, 6)
    w1, w2 = m.fc1.weight.detach(), m.fc2.weight.detach()
    with torch.no_grad():
        if preact:
            out = F.relu(norm(m.bn2, F.relu(norm(m.bn1, x)) @ w1.T)) @ w2.T
            expected = out + x if residual else out
        else:
            out = norm(m.bn2, F.relu(norm(m.bn1, x @ w1.T)) @ w2.T)
            expected = F.relu(out + x) if residual else F.relu(out)
        torch.testing.assert_close(m(x), expected)


def test_mlp_block_identity_when_branch_silenced():
    m = ResidualMLPBlock(6, preact=True).eval()
    nn.init.zeros_(m.fc2.weight)
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert torch.allclose(m(x), x)


def test_notebook_identity_block_widths_kernel_and_keras_padding():
    from resnetlab.blocks import identity_block

    block = identity_block(6, f=2, filters=(2, 4, 6)).eval()
    x = torch.randn(3, 6, 4, 4)
    assert block(x).shape == x.shape
    # Weights and biases, BN gamma and beta: (6*2+2) + 2*2 + (2*4*2*2+4) + 2*4 + (4*6+6) + 2*6, by hand.
    assert n_params(block) == 14 + 4 + 36 + 8 + 30 + 12
    # Keras's "same" for an even kernel pads one row and column at the bottom and right only.
    h = torch.randn(1, 2, 4, 4)
    expected = F.conv2d(F.pad(h, (0, 1, 0, 1)), block.conv2.weight, block.conv2.bias)
    torch.testing.assert_close(block.conv2(h), expected)
    with pytest.raises(ValueError, match="must equal F3"):
        identity_block(5, f=3, filters=(2, 4, 6))


def test_notebook_convolutional_block_projects_with_stride():
    from resnetlab.blocks import convolutional_block

    block = convolutional_block(3, f=3, filters=(2, 4, 6), s=2)
    assert block(torch.randn(2, 3, 8, 8)).shape == (2, 6, 4, 4)
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)  # Keras: the stride on the first 1x1
    # (3*2+2) + 4 + (2*4*3*3+4) + 8 + (4*6+6) + 12 + shortcut (3*6+6) + 12
    assert n_params(block) == 8 + 4 + 76 + 8 + 30 + 12 + 24 + 12
    same_shape = convolutional_block(6, f=3, filters=(2, 2, 6), s=1)
    assert same_shape.downsample is not None  # the notebook's block projects even when the shape allows the identity



def test_notebook_blocks_start_as_keras_starts_them_and_name_the_notebooks_call():
    """Built alone, the blocks start as signs_resnet50's do (Glorot-uniform kernels, zero biases, Keras's
    BN momentum); given the tensor X as the notebook's functions take it, they say how to call them."""
    from resnetlab.blocks import convolutional_block, identity_block

    torch.manual_seed(0)
    block = convolutional_block(64, f=3, filters=(64, 64, 256), s=1)
    bound = (6 / (64 * 9 + 64 * 9)) ** 0.5  # Glorot uniform for the 3x3 conv: fans k*k*in and k*k*out
    assert block.conv2.weight.abs().max() <= bound
    assert block.conv2.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert torch.count_nonzero(block.conv2.bias) == 0
    assert {m.momentum for m in block.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}
    x = torch.randn(2, 256, 4, 4)
    with pytest.raises(TypeError, match=r"identity_block\(X.shape\[1\], f, filters\)\(X\), not identity_block\(X"):
        identity_block(x, 3, [64, 64, 256])
    with pytest.raises(TypeError, match="convolutional_block builds the block"):
        convolutional_block(x, f=3, filters=[64, 64, 256], s=2)
    with pytest.raises(TypeError, match="filters as \\[F1, F2, F3\\], got 256, 3, 64"):
        identity_block(256, 3, 64)
    with pytest.raises(TypeError, match=r"identity_block takes no training= \(call block.train\(\) or block.eval\(\) instead"):
        identity_block(256, 3, [64, 64, 256], training=False)
    with pytest.raises(TypeError, match="convolutional_block takes no initializer= .*Glorot-uniform.*, colour="):
        convolutional_block(256, 3, [64, 64, 256], initializer="glorot_uniform", colour=1)
    # The 2018 notebook's signature: its stage= and block= named Keras layers, and say so.
    with pytest.raises(TypeError, match=r"identity_block takes no stage= \(it only named the notebook's Keras layers; a module "
                                        r"is named by its place in the model\), block= \(it only named"):
        identity_block(256, 3, [64, 64, 256], stage=2, block="a")
    assert identity_block(x.shape[1], 3, [64, 64, 256])(x).shape == x.shape


def test_a_bottleneck_subclass_takes_the_papers_stride_as_bottleneck_does():
    from resnetlab import ResNet

    class Mine(Bottleneck):
        pass

    model = ResNet(Mine, [1, 1], widths=[8, 16], stride_in_1x1=True)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)

def test_the_notebook_resnet50_is_made_of_its_two_blocks():
    """signs_resnet50's stages are the notebook's convolutional_block then identity_blocks, weight for weight."""
    from resnetlab.blocks import convolutional_block, identity_block
    from resnetlab.models import create_model

    model = create_model("signs_resnet50").eval()
    stages = [(64, (64, 64, 256), 1), (256, (128, 128, 512), 2), (512, (256, 256, 1024), 2), (1024, (512, 512, 2048), 2)]
    x = torch.randn(2, 64, 15, 15)  # what the stem gives a 64x64 image
    for stage, (in_channels, filters, s) in zip(model.stages(), stages):
        ours = [convolutional_block(in_channels, 3, filters, s=s)] + [identity_block(filters[2], 3, filters) for _ in stage[1:]]
        for mine, theirs in zip(ours, stage, strict=True):
            mine.load_state_dict(theirs.state_dict(), strict=True)  # same tensors under the same names
            mine.eval()
        with torch.no_grad():
            y = torch.nn.Sequential(*ours)(x)
            torch.testing.assert_close(y, stage(x))
        x = y


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_preact_and_a_contradicting_order_are_refused(block):
    with pytest.raises(ValueError, match="preact=True is order='preact', which contradicts order='post'"):
        block(16, 16, order="post", preact=True)
    assert block(16, 16, order="preact", preact=True).preact  # the two agree


def test_torchvisions_downsample_argument_points_at_the_shortcut_keyword():
    downsample = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
    with pytest.raises(ValueError, match="not a module: .*pass shortcut='B'"):
        Bottleneck(64, 64, 1, downsample)
