"""Run checkpoints through transformers in a separate process (used by tests/test_bert_hf.py and bench/).

    python tests/hf_run.py jobs.json

``jobs.json`` is a list of jobs ``{"folder", "arch", "inputs", "output"}``: load ``folder`` with
``<arch>.from_pretrained(folder, output_loading_info=True)`` (eager attention, eval mode, float32, CPU, 1
thread), run it on the arrays of the ``inputs`` npz (``input_ids``, ``attention_mask``, optional
``token_type_ids``, ``labels``) and write to the ``output`` npz: ``logits`` + ``loss`` (BertForMaskedLM) or
``last_hidden_state`` + ``pooler_output`` (BertModel), the loading info (``missing_keys``,
``unexpected_keys``, ``mismatched_keys``, ``error_msgs``) and ``tied`` (decoder weight is the word embedding).

torch and transformers are imported inside ``main``: the package never depends on them, and pytest collects
this file for doctests where they are absent.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(argv: list[str]) -> int:
    import torch
    import transformers

    torch.set_num_threads(1)
    jobs = json.loads(open(argv[1]).read())
    for job in jobs:
        cls = getattr(transformers, job["arch"])
        model, info = cls.from_pretrained(job["folder"], output_loading_info=True, attn_implementation="eager")
        model = model.float().eval()
        z = np.load(job["inputs"])
        kwargs = {k: torch.from_numpy(z[k].astype(np.int64)) for k in z.files}
        if job["arch"] != "BertForMaskedLM":
            kwargs.pop("labels", None)
        with torch.no_grad():
            out = model(**kwargs)
        res = {k: np.array([str(x) for x in info.get(k, [])], dtype=str) for k in
               ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}  # fmt: skip
        if job["arch"] == "BertForMaskedLM":
            res["logits"] = out.logits.numpy()
            if out.loss is not None:
                res["loss"] = np.array(out.loss.item(), np.float32)
            emb = model.bert.embeddings.word_embeddings.weight
            res["tied"] = np.array(model.cls.predictions.decoder.weight.data_ptr() == emb.data_ptr())
        else:
            res["last_hidden_state"] = out.last_hidden_state.numpy()
            if getattr(out, "pooler_output", None) is not None:
                res["pooler_output"] = out.pooler_output.numpy()
        res["versions"] = np.array(f"torch={torch.__version__} transformers={transformers.__version__}")
        np.savez(job["output"], **res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
