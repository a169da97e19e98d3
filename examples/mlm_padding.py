"""The MLM padding-sensitivity scenario, reproduced and fixed.

A DL4J user's BERT-style masked-language model (SameDiff ``multiHeadDotProductAttention``, ``[batch, time]``
feature masks) reached > 90 % accuracy on fully packed sequences, but padding even 3 positions at inference
took accuracy at the VALID positions to about 0 %, while truncation or filling the same slots with real
tokens kept it high. This script trains the same kind of model several ways on a synthetic task and shows:

- **correct** (samediff_py's masked attention): pad-invariant; padded logits equal truncated ones to float32
  rounding;
- **inverted** (the user's bug, built through the raw DL4J op because samediff_py refuses the inverted mask):
  trains fine on packed data, collapses to chance as soon as padding appears;
- gradual mistakes (**no_mask**, **softmax_over_queries**, **norm_over_time**): degrade as pads grow.

It also answers the user's axis question by printing one sequence's attention weights in both layouts.

    python examples/mlm_padding.py            # full run (a few minutes on 2 cores)
    python examples/mlm_padding.py --quick    # CI-sized run

Outputs (``--out``, default ``out/mlm_padding``): ``results.json``, ``accuracy_vs_pads.png``, ``table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samediff_py import Graph, MaskError, masked, mistakes, testing
from samediff_py.models import Encoder, EncoderConfig, correct_attention, correct_norm
from samediff_py.train import Trainer

# ------------------------------------------------------------------------------------------- the task
PAD, MASK = 0, 1  # special ids; real tokens are 2 .. 2 + N_REAL - 1
N_REAL = 24
VOCAB = N_REAL + 2
SEQ_LEN = 32
MOTIF = 4
MASK_RATE = 0.15
IGNORE = -1


def make_batch(rng: np.random.Generator, batch: int, length: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Fully packed MLM batch: each row tiles a random 4-token motif; 15 % of positions become MASK and are
    the targets (predictable only from the copies 4, 8, ... positions away). Returns (tokens, labels)."""
    motifs = rng.integers(2, 2 + N_REAL, (batch, MOTIF))
    clean = np.tile(motifs, (1, -(-length // MOTIF)))[:, :length]
    chosen = rng.random((batch, length)) < MASK_RATE
    tokens = np.where(chosen, MASK, clean).astype(np.int32)
    labels = np.where(chosen, clean, IGNORE).astype(np.int32)
    return tokens, labels


# ------------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    name: str
    attend: Callable = correct_attention
    norm: Callable = correct_norm
    about: str = ""


VARIANTS = [
    Variant("correct", about="samediff_py masked attention (key mask, padded queries zeroed)"),
    Variant("inverted", attend=mistakes.inverted_mask, about="raw DL4J op fed 1 - mask (mask from tokens == PAD)"),
    Variant("no_mask", attend=mistakes.no_mask, about="raw DL4J op without a mask"),
    Variant(
        "softmax_over_queries",
        attend=mistakes.softmax_over_queries,
        about="hand-built attention, key-first weights, softmax over the query axis",
    ),
    Variant("norm_over_time", norm=mistakes.norm_over_time, about="layer norm over the time axis"),
]


@dataclass
class Model:
    variant: Variant
    graph: Graph
    tokens: Any
    mask: Any
    labels: Any
    logits: masked.Masked
    loss: Any
    accuracy: Any


def build(variant: Variant, seed: int = 0, cfg: EncoderConfig | None = None) -> Model:
    """The BERT-style encoder (2 blocks, width 32, 2 heads) with masked cross-entropy over MASK positions.

    Training projects only the MASK positions' rows onto the vocabulary (``Encoder.mlm``: loss and accuracy
    over the counted rows); the full logits stay in the graph for evaluation."""
    cfg = cfg or EncoderConfig(vocab=VOCAB, d_model=32, heads=2, d_ff=64, layers=2, max_len=SEQ_LEN)
    g = Graph(seed=seed)
    tokens = g.placeholder("tokens", ("batch", "time"), "int32")
    labels = g.placeholder("labels", ("batch", "time"), "int32")
    mask = masked.mask_placeholder(g, "mask", tokens=tokens, pad_id=PAD)
    head = Encoder(g, cfg).mlm(tokens, mask, labels, IGNORE, attend=variant.attend, norm=variant.norm)
    return Model(variant, g, tokens, mask, labels, head.logits, head.loss, head.accuracy)


def batches(seed: int, steps: int, batch: int) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        tokens, labels = make_batch(rng, batch)
        yield {"tokens": tokens, "labels": labels, "mask": np.ones(tokens.shape, np.float32)}


def train(model: Model, steps: int, batch: int = 64, lr: float = 3e-3, seed: int = 1, progress: bool | None = None):
    trainer = Trainer(model.graph, model.loss, updater="adam", lr=lr)
    return trainer.fit(list(batches(seed, steps, batch)), epochs=1, progress=progress)


# ------------------------------------------------------------------------------------------- evaluation
MODES = ("truncated", "padded", "real_tokens")


def eval_feeds(tokens: np.ndarray, labels: np.ndarray, n: int, mode: str, rng: np.random.Generator) -> dict:
    """Feeds for ``n`` pads in one mode; targets in the last ``n`` slots are never scored."""
    t = tokens.shape[1]
    keep = t - n
    if mode == "truncated":
        return {
            "tokens": tokens[:, :keep],
            "labels": labels[:, :keep],
            "mask": np.ones((len(tokens), keep), np.float32),
        }
    tok, lab = tokens.copy(), labels.copy()
    lab[:, keep:] = IGNORE
    m = np.ones(tok.shape, np.float32)
    if mode == "padded":
        tok[:, keep:] = PAD
        m[:, keep:] = 0.0
    elif mode == "real_tokens":
        tok[:, keep:] = rng.integers(2, 2 + N_REAL, (len(tok), n))
    else:
        raise ValueError(mode)
    return {"tokens": tok, "labels": lab, "mask": m}


def evaluate(model: Model, pads: list[int], n_eval: int = 512, seed: int = 99) -> dict[str, Any]:
    """Accuracy at valid MASK positions per (mode, n), and the max |logit difference| at valid positions
    between each mode and the truncated run."""
    rng = np.random.default_rng(seed)
    tokens, labels = make_batch(rng, n_eval)
    out: dict[str, Any] = {m: {} for m in MODES}
    out["drift_padded"], out["drift_real_tokens"] = {}, {}
    for n in pads:
        runs = {}
        for mode in MODES:
            fd = eval_feeds(tokens, labels, n, mode, np.random.default_rng(seed + n))
            logits, acc = model.graph.run(fd, [model.logits.value, model.accuracy])
            runs[mode] = logits[:, : SEQ_LEN - n]
            out[mode][n] = float(acc)
        for mode in ("padded", "real_tokens"):
            out["drift_" + mode][n] = float(np.abs(runs[mode] - runs["truncated"]).max())
    return out


# ------------------------------------------------------------------------------------------- explanations
def explain_axes(model: Model) -> str:
    """One sequence's attention weights in samediff_py's and DL4J's layout, and which axis sums to 1."""
    g = model.graph
    length, n_pad = 6, 2
    rng = np.random.default_rng(5)
    tok, _ = make_batch(rng, 1, length)
    m = np.ones((1, length), np.float32)
    tok[:, length - n_pad :] = PAD
    m[:, length - n_pad :] = 0
    # the first block's attention on its trained weights, asked for its weights too, on a probe input
    probe = g.placeholder(g.unique_name("probe_x"), ("batch", "time", 32))
    x = masked.Masked(probe, model.mask)
    p = masked.AttentionParams(*(g[f"encoder/block0/attn/{w}"] for w in ("wq", "wk", "wv", "wo")))
    _, w_qk = masked.multi_head_attention(x, p, return_weights=True, name="probe", impl="fused")  # DL4J's raw node
    emb = np.random.default_rng(6).normal(size=(1, length, 32)).astype(np.float32)
    ours, raw = g.run({probe.name: emb, "mask": m}, [w_qk, "probe/dl4j_mha_weights"])
    fmt = {"precision": 2, "suppress_small": True, "max_line_width": 120}
    lines = [
        "Which axis of DL4J's [batch][heads][seq][seq] attention weights is the query axis?",
        "  DL4J (libnd4j) returns [batch, heads, KEY, QUERY]: axis 2 is the keys, axis 3 the queries, and the",
        "  softmax runs over axis 2, so weights[b, h, :, q] sums to 1. samediff_py returns [batch, heads, QUERY,",
        "  KEY] (the PyTorch/Keras order): each row weights[b, h, q, :] of a valid query sums to 1.",
        f"One sequence of length {length}, its last {n_pad} positions padded "
        f"(mask {m[0].astype(int).tolist()}), head 0:",
        "samediff_py weights[0, 0] (rows = queries, columns = keys; padded keys get 0, padded query rows are 0):",
        np.array2string(ours[0, 0], **fmt),
        "  row sums (over keys, last axis):   " + np.array2string(ours[0, 0].sum(-1), **fmt),
        "DL4J raw weights[0, 0] (rows = keys, columns = queries):",
        np.array2string(raw[0, 0], **fmt),
        "  column sums (over keys, axis 2):   " + np.array2string(raw[0, 0].sum(0), **fmt),
        "  row sums (over queries, axis 3):   " + np.array2string(raw[0, 0].sum(1), **fmt) + "   <- not a distribution",
    ]
    return "\n".join(lines)


def show_refusal() -> str:
    """samediff_py refuses the inverted training mask (mask built from tokens == PAD) before the JVM runs."""
    model = build(VARIANTS[0])
    tokens, labels = make_batch(np.random.default_rng(0), 4)
    inverted = (tokens == PAD).astype(np.float32)  # the user's mask: all zeros on packed data
    try:
        model.graph.run({"tokens": tokens, "labels": labels, "mask": inverted}, model.loss)
    except MaskError as e:
        return f"samediff_py refuses the inverted training mask (mask = tokens == PAD):\n  MaskError: {e}"
    raise AssertionError("the inverted mask was accepted")


# ------------------------------------------------------------------------------------------- report
def table(results: dict[str, Any], pads: list[int]) -> str:
    head = "| variant | mode | " + " | ".join(f"n={n}" for n in pads) + " |"
    sep = "|---|---|" + "---|" * len(pads)
    rows = [head, sep]
    for name, r in results.items():
        for mode in MODES:
            rows.append(f"| {name} | {mode} | " + " | ".join(f"{r['eval'][mode][n]:.2f}" for n in pads) + " |")
        rows.append(
            f"| {name} | max logit drift (padded) | "
            + " | ".join(f"{r['eval']['drift_padded'][n]:.1e}" for n in pads)
            + " |"
        )
    return "\n".join(rows)


def plot(results: dict[str, Any], pads: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(results))
    rows = -(-len(results) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), sharey=True, squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(results) :]:
        ax.set_visible(False)
    styles = {"truncated": ("k", "-"), "padded": ("tab:red", "-"), "real_tokens": ("tab:blue", "--")}
    for ax, (name, r) in zip(axes, results.items()):
        for mode in MODES:
            c, ls = styles[mode]
            ax.plot(pads, [r["eval"][mode][n] for n in pads], color=c, ls=ls, marker="o", label=mode)
        ax.axhline(1 / N_REAL, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("pads appended (n)")
        ax.set_ylim(-0.02, 1.02)
    for ax in grid[:, 0]:
        ax.set_ylabel("accuracy at valid MASK positions")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("MLM accuracy vs padding: only the correct mask is pad-invariant", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and variants (CI)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per variant")
    ap.add_argument("--variants", default=None, help="comma-separated subset of: " + ",".join(v.name for v in VARIANTS))
    ap.add_argument("--out", default="out/mlm_padding", help="output folder")
    args = ap.parse_args(argv)

    steps = args.steps or (250 if args.quick else 1200)
    pads = [0, 1, 3, 8, 16, 24]
    chosen = [v for v in VARIANTS if args.variants is None or v.name in args.variants.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    print(show_refusal(), "\n")
    results: dict[str, Any] = {}
    for v in chosen:
        t = time.time()
        model = build(v)
        hist = train(model, steps)
        ev = evaluate(model, pads)
        # 8 sequences of 24 tokens, the last 3 padded; then 1 and 8 more pads appended (up to max_len 32)
        probe = eval_feeds(*make_batch(np.random.default_rng(7), 8, SEQ_LEN - 8), 3, "padded", np.random.default_rng(8))
        report = testing.check_pad_invariance(
            model.graph,
            probe,
            [model.logits],
            loss=model.loss,
            pad_values={"tokens": PAD},
            ks=(1, 8),
            atol=1e-4,
            rtol=1e-4,
        )
        results[v.name] = {
            "about": v.about,
            "final_train_loss": float(np.mean(hist.step_losses[-20:])),
            "eval": ev,
            "pad_invariant": report.ok,
            "max_output_drift": report.max_drift("output"),
            "seconds": time.time() - t,
        }
        print(
            f"{v.name:22s} train loss {results[v.name]['final_train_loss']:.3f}  "
            f"acc truncated/padded/real at n=3: {ev['truncated'][3]:.2f} / {ev['padded'][3]:.2f} / "
            f"{ev['real_tokens'][3]:.2f}  pad-invariant: {report.ok}  ({time.time() - t:.0f} s)"
        )
        if v.name == "correct":
            print("\n" + explain_axes(model) + "\n")

    md = table(results, pads)
    print("\nAccuracy at valid MASK positions (chance = 1/24 = 0.04):\n" + md)
    (out / "table.md").write_text(md + "\n")
    plot(results, pads, out / "accuracy_vs_pads.png")
    meta = {"steps": steps, "batch": 64, "pads": pads, "seconds": time.time() - t0, "variants": results}
    (out / "results.json").write_text(json.dumps(meta, indent=1))
    print(f"\nwrote {out}/results.json, table.md, accuracy_vs_pads.png in {time.time() - t0:.0f} s")
    return meta


if __name__ == "__main__":
    main()
