"""Draw the figures of the documentation (the PNGs next to this file).

    python docs/figures/make_figures.py          # needs matplotlib (pip install -e ".[plot]")

Every number shown in a figure is computed by minidl itself (``minidl.kernels.im2col``,
``col2im``, ``max_pool2d_forward``/``backward``) or by the code blocks of the page that shows
it (``schedules.png`` runs those of ``optimizers.md``), so a figure cannot drift from the
code without this script showing it. The output is deterministic (no timestamps in the PNGs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing

from minidl.kernels import (  # noqa: E402
    col2im,
    im2col,
    max_pool2d_backward,
    max_pool2d_forward,
)

COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2"]


def _save(fig: plt.Figure, name: str) -> None:
    fig.savefig(HERE / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(f"wrote docs/figures/{name}")


def _grid(ax: plt.Axes, values: np.ndarray, x0: float, y0: float, fmt: str = "{:g}",
          fill: np.ndarray | None = None, cell: float = 1.0, fontsize: int = 9) -> None:
    """Draw a 2-D array as a grid of numbered cells, top-left corner at (x0, y0)."""
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            color = "white" if fill is None or fill[i][j] is None else fill[i][j]
            ax.add_patch(Rectangle((x0 + j * cell, y0 - (i + 1) * cell), cell, cell,
                                   facecolor=color, edgecolor="black", lw=0.6))
            ax.text(x0 + (j + 0.5) * cell, y0 - (i + 0.5) * cell, fmt.format(values[i, j]),
                    ha="center", va="center", fontsize=fontsize)


def _finish(ax: plt.Axes) -> None:
    ax.set_aspect("equal")
    ax.axis("off")
    ax.autoscale_view()


# --------------------------------------------------------------------------- im2col


def fig_im2col() -> None:
    """x (1, 2, 4, 4), 3x3 kernel, stride 1 -> cols (4, 18); windows colour-coded."""
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    cols = im2col(x, 3)  # (N*OH*OW, KH*KW*C) = (4, 18), columns ordered (kh, kw, c)
    oh = ow = 2
    fig, ax = plt.subplots(figsize=(13, 5.2))
    # input channels, with each output pixel's window outlined
    for c in range(2):
        x0 = c * 5.0
        _grid(ax, x[0, c], x0, 0)
        ax.text(x0 + 2, 0.5, f"x[0, {c}]  (channel {c})", ha="center", fontsize=10)
        for r in range(oh * ow):
            i, j = divmod(r, ow)
            pad = 0.06 * (r + 1)
            ax.add_patch(Rectangle((x0 + j + pad, -(i + 3) + pad), 3 - 2 * pad, 3 - 2 * pad,
                                   fill=False, edgecolor=COLORS[r], lw=2))
    ax.text(4.5, -5.0, "each coloured 3x3 window (over both channels) becomes one row",
            ha="center", fontsize=10)
    # the column matrix
    x0, y0, cw = 14.0, 0.0, 0.62
    fill = [[COLORS[r]] * cols.shape[1] for r in range(cols.shape[0])]
    fill = [[matplotlib.colors.to_rgba(c, 0.35) for c in row] for row in fill]
    _grid(ax, cols, x0, y0, fill=fill, cell=cw, fontsize=7)
    for k in range(cols.shape[1]):
        kh, rest = divmod(k, 3 * 2)
        kw, c = divmod(rest, 2)
        ax.text(x0 + (k + 0.5) * cw, y0 + 0.25, f"{kh}{kw}{c}", ha="center", fontsize=6,
                rotation=90)
    ax.text(x0 + cols.shape[1] * cw / 2, y0 + 1.2,
            f"cols = im2col(x, 3): shape {cols.shape} = (N*OH*OW, KH*KW*C)\n"
            "column label = (kh, kw, c): channels innermost", ha="center", fontsize=10)
    for r in range(cols.shape[0]):
        i, j = divmod(r, ow)
        ax.text(x0 - 0.15, y0 - (r + 0.5) * cw, f"(n=0, oh={i}, ow={j})", ha="right",
                va="center", fontsize=8, color=COLORS[r])
    ax.add_patch(FancyArrowPatch((9.4, -2), (10.4, -2), arrowstyle="-|>", mutation_scale=15))
    ax.set_xlim(-0.5, x0 + cols.shape[1] * cw + 0.3)
    ax.set_ylim(-5.5, 2.3)
    _finish(ax)
    _save(fig, "im2col.png")


def _box(ax: plt.Axes, x: float, y: float, w: float, h: float, label: str, color: str,
         shape: str) -> None:
    ax.add_patch(Rectangle((x, y), w, h, facecolor=matplotlib.colors.to_rgba(color, 0.3),
                           edgecolor=color, lw=1.5))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=10)
    ax.text(x + w / 2, y - 0.25, shape, ha="center", va="top", fontsize=8.5)


def fig_conv_gemm() -> None:
    """Forward as one GEMM, with the shapes of the seed CNN's first layer."""
    n, c, h, w, oc, k = 64, 3, 32, 32, 32, 3
    oh, ow = h - k + 1, w - k + 1
    rows, kk = n * oh * ow, k * k * c
    fig, ax = plt.subplots(figsize=(13, 4.2))
    _box(ax, 0, 1.5, 1.8, 1.8, "x", COLORS[0], f"(N, C, H, W)\n({n}, {c}, {h}, {w})")
    ax.add_patch(FancyArrowPatch((2.0, 2.4), (3.0, 2.4), arrowstyle="-|>", mutation_scale=15))
    ax.text(2.5, 2.6, "im2col", ha="center", fontsize=9)
    _box(ax, 3.2, 0.2, 1.4, 4.4, "cols", COLORS[1],
         f"(N*OH*OW, KH*KW*C)\n({rows}, {kk})")
    ax.text(4.95, 2.4, "@", ha="center", va="center", fontsize=16)
    _box(ax, 5.3, 1.8, 1.4, 1.2, "W_mat.T", COLORS[2], f"(KH*KW*C, OC)\n({kk}, {oc})")
    ax.text(7.05, 2.4, "=", ha="center", va="center", fontsize=16)
    _box(ax, 7.4, 0.2, 1.2, 4.4, "y_rows", COLORS[3], f"(N*OH*OW, OC)\n({rows}, {oc})")
    ax.add_patch(FancyArrowPatch((8.8, 2.4), (9.8, 2.4), arrowstyle="-|>", mutation_scale=15))
    ax.text(9.3, 2.6, "reshape\n(free)", ha="center", fontsize=8.5)
    _box(ax, 10.0, 1.5, 1.8, 1.8, "NHWC\nview", COLORS[3],
         f"(N, OH, OW, OC)\n({n}, {oh}, {ow}, {oc})")
    ax.add_patch(FancyArrowPatch((12.0, 2.4), (13.3, 2.4), arrowstyle="-|>", mutation_scale=15))
    ax.text(12.65, 2.6, "transpose\n(a view)", ha="center", fontsize=8.5)
    _box(ax, 13.5, 1.5, 1.8, 1.8, "y", COLORS[3], f"(N, OC, OH, OW)\n({n}, {oc}, {oh}, {ow})\n"
         "channels-last memory")
    ax.text(7.4, 5.3, "conv2d forward = im2col + ONE matrix product; the product's rows are "
            "already channels-last output pixels", ha="center", fontsize=10.5)
    ax.set_xlim(-0.3, 15.5)
    ax.set_ylim(-1.2, 5.8)
    _finish(ax)
    _save(fig, "conv_gemm.png")


def fig_col2im() -> None:
    """col2im(ones): how many windows read each input pixel (what backward sums)."""
    cases = [((1, 1, 6, 6), 3, 1, 0, "3x3, stride 1"),
             ((1, 1, 6, 6), 3, 1, 1, "3x3, stride 1, pad 1"),
             ((1, 1, 7, 7), 3, 2, 0, "3x3, stride 2")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for ax, (shape, k, s, p, title) in zip(axes, cases):
        x = np.zeros(shape, np.float32)
        cols = im2col(x, k, stride=s, padding=p)
        counts = col2im(np.ones_like(cols), shape, k, stride=s, padding=p)[0, 0]
        cmap = matplotlib.colormaps["Blues"]
        fill = [[cmap(0.15 + 0.8 * v / counts.max()) for v in row] for row in counts]
        _grid(ax, counts, 0, 0, fmt="{:.0f}", fill=fill)
        ax.set_title(f"{title}\ncols {cols.shape} -> x {shape}", fontsize=10)
        _finish(ax)
    fig.suptitle("col2im(ones): each pixel's gradient is a sum over the windows that read it",
                 fontsize=11)
    _save(fig, "col2im.png")


def fig_maxpool() -> None:
    """2x2 max pooling: forward picks the argmax, backward routes gy there; ties -> first."""
    x = np.array([[[[1, 3, 2, 2],
                    [4, 0, 2, 2],
                    [5, 1, 0, 7],
                    [1, 5, 6, 2]]]], np.float32)
    y, ind = max_pool2d_forward(x, 2)
    gy = np.array([[[[10, 20], [30, 40]]]], np.float32)
    gx = max_pool2d_backward(gy, ind, x.shape)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.8))
    win = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    hit = np.zeros((4, 4), bool)
    for i in range(2):
        for j in range(2):
            p = int(ind[0, 0, i, j])
            hit[p // 4, p % 4] = True
    light = [[matplotlib.colors.to_rgba(COLORS[win[i, j]], 0.9 if hit[i, j] else 0.18)
              for j in range(4)] for i in range(4)]
    _grid(axes[0], x[0, 0], 0, 0, fill=light)
    axes[0].set_title("x (4x4); argmax of each window dark\n(tie 2,2,2,2 -> first, row-major)",
                      fontsize=9.5)
    _grid(axes[1], y[0, 0], 1, -1, fill=[[COLORS[0], COLORS[1]], [COLORS[2], COLORS[3]]])
    axes[1].set_title(f"y = max_pool2d(x, 2)\nindices (flat ih*W+iw) = {ind[0, 0].tolist()}",
                      fontsize=9.5)
    _grid(axes[2], gy[0, 0], 1, -1)
    axes[2].set_title("upstream gradient gy", fontsize=9.5)
    _grid(axes[3], gx[0, 0], 0, 0, fill=light)
    axes[3].set_title("gx = max_pool2d_backward(gy, indices)\nall of gy goes to the argmax",
                      fontsize=9.5)
    for ax in axes:
        ax.set_xlim(-0.2, 4.2)
        ax.set_ylim(-4.2, 0.2)
        _finish(ax)
    _save(fig, "maxpool.png")


def fig_diamond() -> None:
    """The diamond graph of the autograd page, with the backward (topological) order."""
    nodes = {"x": (0, 1), "a = x**2": (2, 1), "b = a * 3": (4, 2), "c = a * 4": (4, 0),
             "d = b + c": (6, 1)}
    order = {"d = b + c": "1: Add", "b = a * 3": "2 or 3: Mul", "c = a * 4": "2 or 3: Mul",
             "a = x**2": "4: Pow"}
    edges = [("x", "a = x**2"), ("a = x**2", "b = a * 3"), ("a = x**2", "c = a * 4"),
             ("b = a * 3", "d = b + c"), ("c = a * 4", "d = b + c")]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for a, b in edges:
        (x0, y0), (x1, y1) = nodes[a], nodes[b]
        ax.add_patch(FancyArrowPatch((x0 + 0.55, y0), (x1 - 0.55, y1), arrowstyle="-|>",
                                     mutation_scale=14, color="gray"))
    for name, (px, py) in nodes.items():
        color = COLORS[0] if name == "x" else COLORS[1]
        ax.add_patch(Rectangle((px - 0.55, py - 0.28), 1.1, 0.56,
                               facecolor=matplotlib.colors.to_rgba(color, 0.3),
                               edgecolor=color))
        ax.text(px, py, name, ha="center", va="center", fontsize=9.5)
        if name in order:
            ax.text(px, py - 0.45, f"backward #{order[name]}", ha="center", va="top",
                    fontsize=8, color=COLORS[3])
    ax.text(3, 2.75, "forward: left to right.  backward: right to left, Pow only after BOTH "
            "Muls have delivered dd/da", ha="center", fontsize=9.5)
    ax.set_xlim(-0.8, 6.8)
    ax.set_ylim(-0.9, 3.0)
    _finish(ax)
    _save(fig, "diamond.png")


def _page_namespace(page: str) -> dict:
    """Run the python blocks of ``docs/<page>`` in order and return their namespace, so a
    figure plots exactly what the page computes."""
    import re

    text = (HERE.parent / page).read_text(encoding="utf-8")
    ns: dict = {}
    for code in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M):
        exec(compile(code, page, "exec"), ns)
    return ns


def fig_schedules() -> None:
    """The learning-rate schedules of docs/optimizers.md on its noisy least squares."""
    runs = _page_namespace("optimizers.md")["runs"]
    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(12, 4))
    for color, (name, (lrs, excess)) in zip(COLORS, runs.items()):
        ax_lr.plot(lrs, color=color, label=name)
        ax_loss.semilogy(np.maximum(excess, 1e-6), color=color, label=name, lw=0.9)
    ax_lr.set(xlabel="step", ylabel="learning rate", title="the schedules")
    ax_loss.set(xlabel="step", ylabel="loss above the least-squares floor",
                title="SGD (momentum 0.9, batch 8) on noisy least squares")
    for ax in (ax_lr, ax_loss):
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    _save(fig, "schedules.png")


def main() -> None:
    fig_schedules()
    fig_im2col()
    fig_conv_gemm()
    fig_col2im()
    fig_maxpool()
    fig_diamond()


if __name__ == "__main__":
    main()
