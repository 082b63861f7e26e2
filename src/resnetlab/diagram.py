"""Architecture diagrams of a ``ResNet`` (Keras's ``plot_model``), read from the modules themselves.

Graphviz lays the graph out; this module only says what is in it. The stem, each stage and each
block are clusters; each convolution is one box holding the BN and ReLU that go with it, in the
order the block applies them (pre-activation blocks put BN-ReLU first). The shortcut is its own
path into the addition (⊕), drawn as in the 2015 paper's Figure 3: solid for the identity, dotted
where it computes something (a projection or zero padding where the shape changes, the 2016 paper's
scaling, gating or dropout). Plain blocks have neither.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import graphviz
import torch
from torch import nn

from .blocks import BasicBlock, Bottleneck, ZeroPadShortcut
from .models import ResNet, count_parameters, eval_mode
from .runs import atomic_write

FORMATS = (".svg", ".png")

# One colour a layer kind, so the eye finds the pattern of a block before reading it.
_FILL = {
    "conv": "#cfe2f3", "bn": "#fff2cc", "relu": "#f4cccc", "pool": "#d9ead3",
    "fc": "#d9d2e9", "shortcut": "#eeeeee", "io": "#ffffff",
}
_FONT = "DejaVu Sans"
_WIDTH = 120  # points

Row = tuple[str, str]  # (layer kind, text)
_BN: Row = ("bn", "BN")
_RELU: Row = ("relu", "ReLU")


def draw_model(model: ResNet, path: str | Path, collapse: bool = True, title: str | None = None,
               image_size: tuple[int, int] | None = None) -> Path:
    """Draw ``model`` to ``path``, an SVG or PNG file chosen by its suffix, and return the path.

    With ``collapse`` a run of identical blocks is drawn once, labelled "× N", so that even
    ResNet-152 fits on a page; without it every block is drawn. ``title`` (e.g. the model's
    name) heads the figure above the depth and parameter count. With ``image_size`` (height,
    width) the input, the stem and each stage are labelled with the side of their maps.
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot draw {path.name!r}: the file name must end in {' or '.join(FORMATS)}")
    graph = model_graph(model, collapse, title, image_size)
    try:
        data = graph.pipe(format=path.suffix.lower()[1:])
    except graphviz.ExecutableNotFound:
        raise RuntimeError("drawing needs Graphviz's `dot` program: install graphviz (e.g. apt install graphviz)") from None
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))  # whole or not at all: a full disk keeps an earlier drawing
    return path


def model_graph(model: ResNet, collapse: bool = True, title: str | None = None,
                image_size: tuple[int, int] | None = None) -> graphviz.Digraph:
    """The diagram of ``model`` as a graphviz ``Digraph`` (its ``.source`` is the DOT text)."""
    sides = [""] * (len(model.stages()) + 2)  # the input's, the stem's output and each stage's
    if image_size is not None:
        sides = [f"{h}×{w}" for h, w in [tuple(image_size), *_map_sides(model, image_size)]]
    g = graphviz.Digraph("resnet")
    g.attr(label=_heading(model, title), labelloc="t", fontname=_FONT, fontsize="16",
           ranksep="0.22", nodesep="0.3", newrank="true")
    # Nodes of one group line up, so the main path runs straight down and shortcuts bend around it.
    g.attr("node", shape="plain", fontname=_FONT, fontsize="11", group="main")
    g.attr("edge", arrowsize="0.6", fontname=_FONT, fontsize="9", color="#444444")

    last = _draw_stem(g, model, sides[0], sides[1])
    for i, stage in enumerate(model.stages(), 1):
        # Names go in the first box of each block rather than on the cluster: edges would cross them there.
        with g.subgraph(name=f"cluster_layer{i}") as c:
            c.attr(label="", style="rounded,filled", fillcolor="#f4f4f4", color="#aaaaaa")
            j = 0
            for run in _runs(list(stage), collapse):
                names = f"layer{i}.{j}" if len(run) == 1 else f"× {len(run)}   layer{i}.{j}–{j + len(run) - 1}"
                if type(run[0]) not in (BasicBlock, Bottleneck):  # the user's own unit: its class names it
                    names += f"  {type(run[0]).__name__}"
                stage_name = f"stage {i} ({sides[i + 1]})" if sides[i + 1] else f"stage {i}"
                header = f"{stage_name}: {names}" if j == 0 else names
                last = _draw_block(g, c, run[0], f"layer{i}_{j}", header, len(run) > 1, last)
                j += len(run)
    _draw_head(g, model, last)
    return g


def _map_sides(model: ResNet, image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The sides (height, width) of the stem's output map and of each stage's, for one image of
    ``image_size``: read from a forward pass, so that any stem or block of the user's own counts."""
    stages, sides = model.stages(), []
    hooks = [stages[0].register_forward_pre_hook(lambda module, inputs: sides.append(tuple(inputs[0].shape[-2:])))]
    hooks += [s.register_forward_hook(lambda module, inputs, out: sides.append(tuple(out.shape[-2:]))) for s in stages]
    weight = model.conv1.weight
    try:
        with torch.no_grad(), eval_mode(model):  # eval: the batch norms' statistics stay as they are
            model(torch.zeros(1, model.conv1.in_channels, *image_size, dtype=weight.dtype, device=weight.device))
    finally:
        for hook in hooks:
            hook.remove()
    return sides


def _heading(model: ResNet, title: str | None) -> str:
    # Weighted layers as the papers count them: the stem conv, the branch convs and the fc (a backbone has none).
    depth = 1 + sum(len(_convs(b)) for b in model.blocks()) + isinstance(model.fc, nn.Linear)
    kind = "pre-activation ResNet" if model.preact else "ResNet" if model.residual else "plain net"
    variant = [model.order.replace("_", " ")] if model.order not in ("post", "preact") else []
    variant += [f"{model.mixing.replace('_', ' ')} shortcut"] if model.residual and model.mixing != "add" else []
    if variant:
        kind += f" ({', '.join(variant)})"
    line = f"{depth}-layer {kind}, {count_parameters(model) / 1e6:.2f} M trainable parameters"
    return f"{title}\n{line}" if title else line


def _out_channels(block: BasicBlock | Bottleneck) -> int:
    return _convs(block)[-1].out_channels


def _convs(block: BasicBlock | Bottleneck) -> list[nn.Conv2d]:
    return block.convs


def _conv(conv: nn.Conv2d) -> Row:
    k, s = conv.kernel_size[0], conv.stride[0]
    return ("conv", f"{k}×{k} conv, {conv.out_channels}" + (f", /{s}" if s > 1 else ""))


def _label(rows: list[Row], header: str | None = None) -> str:
    """An HTML-like label: an optional bold header over the rows, stacked in one box and coloured by kind."""
    # One minimum width for every box, so that the blocks read as a column of equal steps.
    cells = "".join(
        f'<TR><TD BGCOLOR="{_FILL[kind]}" WIDTH="{_WIDTH}">{html.escape(text)}</TD></TR>' for kind, text in rows
    )
    if header:
        cells = f'<TR><TD BORDER="0" ALIGN="LEFT"><B>{html.escape(header)}</B></TD></TR>' + cells
    return f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">{cells}</TABLE>>'


def _branch(block: BasicBlock | Bottleneck) -> list[list[Row]]:
    """The residual branch, one list of rows a convolution, in the block's own order (blocks._Block)."""
    convs = _convs(block)
    if block.order == "preact":
        units = [[_BN, _RELU, _conv(c)] for c in convs]
    elif block.order == "relu_preact":
        units = [[_RELU, _conv(c), _BN] for c in convs]
    else:
        units = [[_conv(c), _BN, _RELU] for c in convs]
        if block.order == "post":
            units[-1].pop()  # the last ReLU comes after the addition
        elif block.order == "bn_after_add":
            del units[-1][1:]  # the last BN and ReLU come after the addition
    if block.residual and block.mixing == "scale":
        units[-1].append(("shortcut", f"× {block.scales[1]:g}"))
    elif block.residual and block.mixing == "gate":
        units[-1].append(("shortcut", "× g"))
    return units


def _after_add(block: BasicBlock | Bottleneck) -> list[Row]:
    """What the block applies after the addition."""
    return {"post": [_RELU], "bn_after_add": [_BN, _RELU]}.get(block.order, [])


def _shortcut(block: BasicBlock | Bottleneck) -> list[Row] | None:
    """The shortcut's rows, or None for the plain identity (and for plain blocks)."""
    ds = block.downsample
    if ds is None:
        rows = []
    elif isinstance(ds, ZeroPadShortcut):
        rows = [("shortcut", "option A shortcut")]
        if ds.stride > 1:
            rows.append(("shortcut", f"subsample /{ds.stride}"))
        rows.append(("shortcut", f"zero-pad to {_out_channels(block)} ch"))
    else:
        rows = [("shortcut", "projection shortcut")] + [_conv(m) if isinstance(m, nn.Conv2d) else _BN for m in ds]
    if block.mixing == "scale":
        rows.append(("shortcut", f"× {block.scales[0]:g}"))
    elif block.mixing in ("gate", "shortcut_gate"):
        stride = f", /{block.stride}" if block.stride > 1 else ""
        rows += [("shortcut", f"g = σ(1×1 conv{stride} + b)"), ("shortcut", "× (1 − g)")]
    elif block.mixing == "dropout":
        rows.append(("shortcut", f"dropout {block.shortcut_dropout:g}"))
    return rows or None


_STOCK_PARTS = re.compile(r"(conv|bn)\d+|downsample|gate")  # the children a stock block's options make


def _own_parts(block: BasicBlock | Bottleneck) -> list[Row]:
    """Rows naming what a block of the user's own class (a subclass of a stock block) adds: the drawing
    reads the stock options and layers, so new code and new layers are said rather than drawn as stock."""
    kind = type(block)
    if kind in (BasicBlock, Bottleneck):
        return []
    stock = BasicBlock if isinstance(block, BasicBlock) else Bottleneck
    rows = [("io", f"+ {name}: {type(m).__name__}") for name, m in block.named_children() if not _STOCK_PARTS.fullmatch(name)]
    own = [f"{method}()" for method in ("_branch", "_mix", "forward") if getattr(kind, method) is not getattr(stock, method)]
    if own:
        rows.append(("io", f"own {' and '.join(own)}: drawn as {stock.__name__}'s"))
    return rows


def _signature(block: BasicBlock | Bottleneck) -> tuple:
    """What the diagram shows of a block; equal signatures draw alike."""
    shapes = tuple((c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in _convs(block))
    shortcut = _shortcut(block)
    return type(block), tuple(map(tuple, _branch(block))), block.residual, shapes, tuple(shortcut) if shortcut else None


def _runs(blocks: list, collapse: bool) -> list[list]:
    """Group consecutive blocks that draw alike (each block alone when not collapsing)."""
    runs: list[list] = []
    for b in blocks:
        if collapse and runs and _signature(runs[-1][0]) == _signature(b):
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _draw_block(
    g: graphviz.Digraph, stage: graphviz.Digraph, block: BasicBlock | Bottleneck,
    name: str, header: str, repeated: bool, source: str,
) -> str:
    """Draw ``block`` under ``header``, fed by node ``source``; return its output node."""
    units = _branch(block)
    units[-1] += _own_parts(block)
    shortcut = _shortcut(block) if block.residual else None
    # A pre-activation shortcut that is not the identity reads the normalised input (blocks._branch),
    # so the first BN-ReLU is drawn on its own, shared by both paths.
    split = block.preact and block.downsample is not None
    if split:
        units = [units[0][:2], units[0][2:]] + units[1:]
    chain = [f"{name}_{k}" for k in range(len(units))]
    add, relu = f"{name}_add", f"{name}_relu"
    with stage.subgraph(name=f"cluster_{name}") as c:
        # A thick border marks a box that stands for several identical blocks.
        c.attr(label="", style="rounded,filled", fillcolor="#ffffff", color="#555555" if repeated else "#bbbbbb",
               penwidth="2" if repeated else "1")
        for k, (node, rows) in enumerate(zip(chain, units)):
            c.node(node, _label(rows, header if k == 0 else None))
        if block.residual:
            c.node(add, "⊕", shape="circle", width="0.3", fixedsize="true", fontsize="16")
            chain.append(add)
        if shortcut is not None:
            # Beside the branch's last box: the two paths run side by side into the addition.
            with c.subgraph() as row:
                row.attr(rank="same")
                row.node(f"{name}_shortcut", _label(shortcut), group=name)
                row.node(chain[len(units) - 1])
        if _after_add(block):
            c.node(relu, _label(_after_add(block)))
            chain.append(relu)
    _link(g, [source] + chain)
    fork = chain[0] if split else source
    if block.residual and shortcut is None:
        g.edge(fork, add, label=" identity", color="#1f5fa8", fontcolor="#1f5fa8", weight="0")
    elif shortcut is not None:
        g.edge(fork, f"{name}_shortcut", style="dotted", penwidth="1.5")
        g.edge(f"{name}_shortcut", add, style="dotted", penwidth="1.5")
    return chain[-1]


def _draw_stem(g: graphviz.Digraph, model: ResNet, input_side: str = "", out_side: str = "") -> str:
    """Input, stem conv (+BN, ReLU) and max pool; return the last node."""
    channels = model.conv1.in_channels
    g.node("input", _label([("io", f"input, {channels} channel{'s' if channels != 1 else ''}"
                                   + (f", {input_side}" if input_side else ""))]))
    rows = [_conv(model.conv1)]
    if isinstance(model.bn1, nn.BatchNorm2d):
        rows.append(_BN)
    if isinstance(model.relu, nn.ReLU):
        rows.append(_RELU)
    nodes = [("stem_conv", rows)]
    # A backbone of the stem's map alone takes it before the pool, which then computes nothing it returns.
    stem_only = model.out_indices is not None and max(model.out_indices) == 0
    if isinstance(model.maxpool, nn.MaxPool2d) and not stem_only:
        k, s = model.maxpool.kernel_size, model.maxpool.stride
        nodes.append(("stem_pool", [("pool", f"{k}×{k} max pool, /{s}")]))
    with g.subgraph(name="cluster_stem") as c:
        c.attr(label="", style="rounded,filled", fillcolor="#f4f4f4", color="#aaaaaa")
        for k, (node, node_rows) in enumerate(nodes):
            header = f"stem ({model.stem})" + (f", out {out_side}" if out_side else "")
            c.node(node, _label(node_rows, header if k == 0 else None))
    _link(g, ["input"] + [node for node, _ in nodes])
    return nodes[-1][0]


def _draw_head(g: graphviz.Digraph, model: ResNet, source: str) -> None:
    """Final BN-ReLU (pre-activation nets), pooling and the classifier."""
    # BN-ReLU after the last stage of pre-activation nets, the ReLU alone after ReLU-only pre-activation units.
    final = [_BN] * isinstance(model.final_bn, nn.BatchNorm2d) + [_RELU] * isinstance(model.final_act, nn.ReLU)
    nodes = [("final_bn", final)] if final else []
    if model.out_indices is not None:  # a backbone (features_only): its outputs are feature maps
        names = ", ".join(model.feature_info[i]["module"] for i in model.out_indices)
        nodes.append(("out", [("io", f"feature maps of {names}")]))
    else:
        if isinstance(model.avgpool, nn.AdaptiveAvgPool2d):
            nodes.append(("pool", [("pool", "global avg pool")]))
        else:
            k = model.avgpool.kernel_size
            nodes.append(("pool", [("pool", f"{k}×{k} avg pool, flatten")]))
        classes = f"{model.fc.out_features} classes" if isinstance(model.fc, nn.Linear) else "none: pooled features out"
        nodes.append(("fc", [("fc", f"fc, {classes}")]))
    for node, rows in nodes:
        g.node(node, _label(rows))
    _link(g, [source] + [node for node, _ in nodes])


def _link(g: graphviz.Digraph, chain: list[str]) -> None:
    """Edges along the main path."""
    for a, b in zip(chain, chain[1:]):
        g.edge(a, b)
