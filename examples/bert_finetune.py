"""Fine-tune a transformers BERT checkpoint's masked-language model on padded variable-length data, then save it
back for transformers (and as a samediff_py checkpoint).

1. ``samediff_py.bert.from_pretrained(folder)`` reads ``config.json`` + ``model.safetensors`` (default: the
   tiny random BERT in tests/fixtures/tiny_bert) and builds the graph on placeholders named like
   transformers' inputs: ``input_ids``, ``attention_mask`` (1 = token), ``token_type_ids``, ``labels``
   (``-100`` = not counted).
2. A synthetic MLM task on padded batches of variable length: each row tiles a random 3-token motif (20
   token ids from 5 up, so the pad id 0 and the mask id 4 never occur as tokens), 15 % of positions are replaced
   by the mask id (labels there: the original token, so the model must read the motif's other copies).
   Batches are right-padded to their longest row (``samediff_py.padding.pad_batch``).
3. ``Trainer.fit`` fine-tunes every weight (Adam; a tqdm progress bar on a terminal; hidden dropout at the
   checkpoint's rate). The MLM decoder IS the word embedding Var, so it stays tied.
4. Held-out loss and accuracy at the masked positions before and after; pad-invariance of the fine-tuned
   model (``samediff_py.testing.assert_pad_invariant``: each row alone, appended pads, refilled padding).
5. ``model.save_pretrained(out/"hf")`` (transformers' names and layout; ``BertForMaskedLM.from_pretrained``
   loads it with no missing or unexpected keys) and ``samediff_py.train.save(graph, out/"model.sdz")`` (the
   graph with its Adam state, to continue training with ``Trainer.restore``); both reloaded and checked.

    python examples/bert_finetune.py                       # the tiny fixture, ~1 minute on 2 cores
    python examples/bert_finetune.py --model path/to/bert-folder --out out/my-bert --steps 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from samediff_py import bert, masked, padding, testing
from samediff_py.train import DROPOUT_KEY, Trainer, feed_inference, load, save

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "tests" / "fixtures" / "tiny_bert"
MASK_ID = 4  # the tiny fixture's [MASK] (bert-base-uncased: 103); pass --mask-id for another vocabulary
FIRST_TOKEN = 5  # ids below are special (pad 0, ..., mask 4)
MOTIF = 3
MASK_RATE = 0.15


def make_rows(rng: np.random.Generator, n: int, tokens: int, min_len: int, max_len: int, mask_id: int) -> list[dict]:
    """``n`` unpadded MLM examples of random length in [min_len, max_len] over ``tokens`` distinct token ids
    (from 5 up): ids, token types, labels."""
    rows = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        motif = rng.integers(FIRST_TOKEN, FIRST_TOKEN + tokens, MOTIF)
        clean = np.tile(motif, -(-length // MOTIF))[:length]
        chosen = rng.random(length) < MASK_RATE
        chosen[rng.integers(length)] = True  # at least one target per row
        rows.append(
            {
                "input_ids": np.where(chosen, mask_id, clean),
                "token_type_ids": (np.arange(length) >= length // 2).astype(np.int64),  # two "segments"
                "labels": np.where(chosen, clean, bert.IGNORE_LABEL),
            }
        )
    return rows


def batch_of(rows: list[dict], pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded feeds for ``rows`` (``samediff_py.padding.pad_batch``): ids padded with the pad id (the
    mask comes with them: 1 = token), token types with 0, labels with -100."""
    ids, mask = padding.pad_batch([r["input_ids"] for r in rows], pad_id, multiple=8)
    types, _ = padding.pad_batch([r["token_type_ids"] for r in rows], 0, multiple=8)
    labels, _ = padding.pad_batch([r["labels"] for r in rows], bert.IGNORE_LABEL, multiple=8)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def batches(rows: list[dict], size: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    return [batch_of(rows[i : i + size], pad_id) for i in range(0, len(rows), size)]


def evaluate(model: bert.Bert, accuracy: Any, data: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Loss and accuracy at the counted (masked) positions, weighted by their number per batch."""
    tot_loss = tot_acc = n = 0.0
    for fd in data:
        loss, acc = model.graph.run(feed_inference(model.graph, fd), [model.outputs.loss, accuracy])
        k = float(((fd["attention_mask"] > 0) & (fd["labels"] != bert.IGNORE_LABEL)).sum())
        tot_loss, tot_acc, n = tot_loss + float(loss) * k, tot_acc + float(acc) * k, n + k
    return {"loss": tot_loss / n, "accuracy": tot_acc / n}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="transformers BERT checkpoint folder")
    ap.add_argument("--out", default="out/bert_finetune", help="output folder")
    ap.add_argument("--steps", type=int, default=120, help="training batches")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-len", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=None, help="default: min(32, max_position_embeddings)")
    ap.add_argument("--mask-id", type=int, default=MASK_ID)
    ap.add_argument("--tokens", type=int, default=20, help="distinct token ids in the synthetic data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # hidden dropout as transformers trains (config.hidden_dropout_prob; the tiny fixture's is 0): the Trainer
    # draws the keep-masks, evaluation and model.feeds() switch it off
    model = bert.from_pretrained(args.model, dropout=True)
    cfg = model.config
    pad_id = 0 if cfg.pad_token_id is None else cfg.pad_token_id
    max_len = args.max_len or min(32, cfg.max_position_embeddings)
    print(f"loaded {args.model}: {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, vocab {cfg.vocab_size}, "
          f"{sum(int(np.prod(v.shape)) for v in model.variables().values()):,} parameters")  # fmt: skip
    accuracy = masked.accuracy(model.outputs.logits, model.inputs.labels, ignore_label=bert.IGNORE_LABEL)

    rng = np.random.default_rng(args.seed)
    tokens = min(args.tokens, cfg.vocab_size - FIRST_TOKEN)
    train_rows = make_rows(rng, args.steps * args.batch_size, tokens, args.min_len, max_len, args.mask_id)
    test_rows = make_rows(rng, 8 * args.batch_size, tokens, args.min_len, max_len, args.mask_id)
    train_data = batches(train_rows, args.batch_size, pad_id)
    test_data = batches(test_rows, args.batch_size, pad_id)
    pad_share = 1 - sum(float(b["attention_mask"].mean()) for b in train_data) / len(train_data)
    print(f"{len(train_data)} training batches of {args.batch_size} rows, lengths {args.min_len}..{max_len} "
          f"({pad_share:.0%} padding)")  # fmt: skip

    before = evaluate(model, accuracy, test_data)
    trainer = Trainer(model.graph, model.outputs.loss, updater="adam", lr=args.lr)
    hist = trainer.fit(train_data, epochs=1, shuffle=False, progress=args.progress)
    after = evaluate(model, accuracy, test_data)
    print(f"held-out MLM loss {before['loss']:.3f} -> {after['loss']:.3f}, "
          f"accuracy at masked positions {before['accuracy']:.2f} -> {after['accuracy']:.2f} "
          f"({hist.epoch_logs[0]['samples_per_sec']:.0f} rows/s)")  # fmt: skip

    # the fine-tuned model ignores padding: rows alone, appended pads, refilled padding (outputs, loss, grads).
    # Dropout keep-masks are internal inputs the Trainer fills with finite values: padded slots get ones too
    keeps = {name: 1.0 for name in model.graph.meta.get(DROPOUT_KEY, {})}
    report = testing.assert_pad_invariant(
        model.graph,
        feed_inference(model.graph, test_data[0]),  # dropout off (keep-masks of ones)
        [model.outputs.logits],
        loss=model.outputs.loss,
        mask="attention_mask",
        ks=(1, 5),
        pad_values={"input_ids": pad_id, "labels": bert.IGNORE_LABEL, **keeps},
        atol=1e-4,
    )
    print(f"pad-invariant: max drift {report.max_drift():.1e} (rows alone, appended pads, refilled padding)")

    hf_dir = model.save_pretrained(out / "hf")
    sdz = save(model.graph, out / "model.sdz")
    fd = test_data[0]
    logits = model.graph.run(feed_inference(model.graph, fd), model.outputs.logits.value)
    valid = fd["attention_mask"] > 0
    again = bert.from_pretrained(hf_dir)  # no dropout placeholders: plain inference graph
    drift_hf = float(np.abs(again.graph.run(fd, again.outputs.logits.value) - logits)[valid].max())
    restored = load(sdz)
    restored_logits = restored.run(feed_inference(restored, fd), model.outputs.logits.value.name)
    drift_sdz = float(np.abs(restored_logits - logits)[valid].max())
    print(f"saved {hf_dir} (transformers) and {sdz} (samediff_py, with the Adam state); reloaded: max |logit "
          f"difference| {drift_hf:.1e} and {drift_sdz:.1e}")  # fmt: skip

    result = {
        "model": str(args.model),
        "steps": len(hist.step_losses),
        "loss_first_last": [hist.step_losses[0], hist.step_losses[-1]],
        "before": before,
        "after": after,
        "pad_invariance_max_drift": report.max_drift(),
        "reload_drift": {"transformers_folder": drift_hf, "samediff_py_checkpoint": drift_sdz},
        "seconds": time.perf_counter() - t0,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"done in {result['seconds']:.0f} s; {out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
