"""Every benchmark in one command; writes bench/RESULTS.md (and bench/scaling.png).

    ./dev bench            # full run (over an hour on 2 cores: the vocabulary and scaling sections run
                           # every variant in its own process, several rounds, for peak RSS)
    ./dev bench --quick    # a few minutes, small sizes and repeat counts (what tests/test_bench_smoke.py runs)
    ./dev bench --only bert_vocab,scaling --merge build/bench-results.json   # re-run some sections only

Each part runs in a fresh Python process (one JVM each, so the nd4j build and thread count can differ) and
reports JSON; comparisons are ratios of medians measured in this same run. PyTorch runs in the benchmark's
own venv (build/bench-venv, from bench/requirements.txt) and is skipped when that venv has no torch.
Backends: each nd4j classifier is fetched into build/jars-<classifier>/ (gradle fetchJars -PjarsDir=...).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from common import table  # noqa: E402

CLASSIFIERS = [
    "linux-x86_64",
    "linux-x86_64-avx2",
    "linux-x86_64-avx512",
    "linux-x86_64-onednn",
    "linux-x86_64-onednn-avx2",
    "linux-x86_64-onednn-avx512",
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sub(code_or_args: list[str], env: dict | None = None, timeout: float = 7200) -> dict:
    """Run ``python <args>`` with ``--json FILE`` appended, or ``python -c`` code that prints JSON last."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        args = [sys.executable, *code_or_args]
        if code_or_args[0] != "-c":
            args += ["--json", str(out)]
        res = subprocess.run(
            args, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(code_or_args[:3])} failed:\n{res.stderr[-3000:]}")
        return json.loads(out.read_text()) if out.exists() else json.loads(res.stdout.strip().splitlines()[-1])


def py_main(module: str, quick: bool) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, 'bench'); import {module} as m; "
        f"r = m.main({quick}); print(json.dumps(r, default=str))"
    )
    return sub(["-c", code])


def machine() -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    flags = next(
        (
            ln.split(":", 1)[1].split()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("flags")
        ),
        [],
    )
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    cls = ROOT / "jars" / "CLASSIFIER"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "simd": " ".join(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl") if f in flags),
        "jdk": java,
        "python": platform.python_version(),
        "classifier": cls.read_text().strip() if cls.exists() else "?",
        "threads": os.environ.get("SAMEDIFF_PY_THREADS") or "1 (default)",
        "load_start": os.getloadavg(),
    }


def ensure_jars(classifier: str) -> Path | None:
    d = ROOT / "build" / f"jars-{classifier}"
    if not (d / "classes").is_dir():
        log(f"fetching {classifier} into {d}")
        res = subprocess.run(
            ["gradle", "-q", "--no-daemon", "fetchJars", f"-Pnd4jClassifier={classifier}", f"-PjarsDir={d}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            log(f"  fetch failed: {res.stderr[-500:]}")
            return None
    # the bridge does not depend on the classifier: use the one ./dev setup compiled for this checkout
    if (ROOT / "jars" / "classes").is_dir():
        shutil.rmtree(d / "classes")
        shutil.copytree(ROOT / "jars" / "classes", d / "classes")
    return d


def train_only(env: dict, quick: bool) -> dict:
    args = ["bench/bench_models.py", "--what", "train_only"] + (["--quick"] if quick else [])
    return sub(args, env=env)


def _threads(R: dict, quick: bool) -> None:
    R["threads"] = {}
    for rnd in range(1 if quick else 2):  # alternate, so a load change hits both
        for n in ("1", "2"):
            r = train_only({"SAMEDIFF_PY_THREADS": n}, quick)
            R["threads"].setdefault(n, []).append(r)
        del rnd
    if not quick:
        import bench_models

        if bench_models.torch_available():
            R["torch_threads"] = {str(n): bench_models.torch_steps([bench_models.BASE], 2, 5, n)[0] for n in (1, 2)}


def _backends(R: dict, quick: bool) -> None:
    R["backends"] = {}
    runs: dict[str, list[dict]] = {}
    if quick:  # no downloads: the classifiers already fetched (jars/ always)
        dirs = {cls: ROOT / "build" / f"jars-{cls}" for cls in CLASSIFIERS}
        dirs = {cls: ensure_jars(cls) for cls, d in dirs.items() if (d / "classes").is_dir()}
        current = (ROOT / "jars" / "CLASSIFIER").read_text().strip() if (ROOT / "jars" / "CLASSIFIER").exists() else ""
        dirs.setdefault(current or "jars/", ROOT / "jars")
        dirs = dict(list(dirs.items())[:2])
    else:
        dirs = {cls: ensure_jars(cls) for cls in CLASSIFIERS}
    for _ in range(1 if quick else 2):  # rounds over all classifiers, so a load change hits them alike
        for cls, d in dirs.items():
            if d is None:
                R["backends"][cls] = {"error": "fetch failed"}
                continue
            try:
                runs.setdefault(cls, []).append(train_only({"SAMEDIFF_PY_JARS": str(d)}, quick))
            except RuntimeError as e:
                R["backends"][cls] = {"error": str(e).splitlines()[-1][:200]}
                dirs[cls] = None
    for cls, rs in runs.items():
        if cls not in R["backends"]:
            R["backends"][cls] = {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in ("train_ms", "infer_ms")}
            log(f"  {cls}: {R['backends'][cls]['train_ms']:.0f} ms")


def _vocab(what: str, quick: bool, rounds: int | None = None) -> dict:
    args = ["bench/bench_vocab.py", "--what", what] + (["--quick"] if quick else [])
    if rounds is not None and not quick:
        args += ["--rounds", str(rounds)]
    return sub(args)


def _set(key: str, fn):
    return lambda R, quick: R.__setitem__(key, fn(quick))


def _distributed(R: dict, quick: bool) -> None:
    if importlib.util.find_spec("ray") is None:
        log("  skipped: ray is not installed (pip install samediff-py[distributed])")
        return
    q = ["--quick"] if quick else []
    R["distributed"] = sub(["bench/bench_distributed.py", *q])
    R["launcher"] = sub(["bench/bench_launcher.py", *q])


# name -> (what the log says, runner(R, quick)), in the order they run
SECTIONS = {
    "transfer": ("transfer", _set("transfer", lambda q: py_main("bench_transfer", q))),
    "models": (
        "models: samediff_py vs Java vs PyTorch",
        _set("models", lambda q: sub(["bench/bench_models.py", *(["--quick"] if q else [])])),
    ),
    "threads": ("threads: 1 vs 2", _threads),
    "backends": ("backends", _backends),
    "train_loop": (
        "training step driven from Python vs plain Java (MLPs)",
        _set("train_loop", lambda q: py_main("bench_train", q)),
    ),
    "attention": (
        "attention: fused vs batched heads vs plain ops",
        _set("attention", lambda q: py_main("bench_attention", q)),
    ),
    "startup": ("startup", _set("startup", lambda q: py_main("bench_startup", q))),
    "padding": ("padding", _set("padding", lambda q: py_main("bench_padding", q))),
    "recurrent": (
        "masked LSTM and conv1d stack vs PyTorch",
        _set("recurrent", lambda q: py_main("bench_recurrent", q)),
    ),
    "bert_vocab": (
        "BERT vocabulary: samediff_py vs two PyTorch twins",
        _set("bert_vocab", lambda q: _vocab("bert", q)),
    ),
    "loss": ("cross-entropy formulations at a BERT vocabulary", _set("loss", lambda q: _vocab("loss", q, 2))),
    "vocab": ("vocabulary sweep", _set("vocab", lambda q: _vocab("vocab", q, 2))),
    "scaling": ("scaling over batch x time, one process per point", _set("scaling", lambda q: _vocab("grid", q, 2))),
    "distributed": ("data-parallel training on Ray (the [distributed] extra)", _distributed),
}


def run_all(quick: bool, only: list[str] | None = None, previous: dict | None = None) -> dict:
    """Run every section (``only``: these; the others are kept from ``previous``, a saved run's JSON)."""
    R: dict = dict(previous or {})
    R.update({"quick": quick, "machine": machine()})
    t0 = time.perf_counter()
    ran = []
    for name, (what, fn) in SECTIONS.items():
        if only is not None and name not in only:
            continue
        log(what)
        fn(R, quick)
        ran.append(name)
    R["machine"]["load_end"] = os.getloadavg()
    R["seconds"] = time.perf_counter() - t0
    R["sections_run"] = ran
    return R


# ------------------------------------------------------------------------------------------- report
def f(x: float, d: int = 1) -> str:
    return f"{x:,.{d}f}"


def rng(v: list[float], d: int = 0) -> str:
    """median (min-max) of per-round figures."""
    if not v:
        return ""
    if len(v) == 1:
        return f(v[0], d)
    return f"{f(statistics.median(v), d)} ({f(min(v), d)}-{f(max(v), d)})"


def med(v: list[float]) -> float:
    return statistics.median(v) if v else math.nan


def plot(R: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    if "scaling" not in R or "rows" not in R["scaling"]:
        return False
    rows = R["scaling"]["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes, ("train_ms", "infer_ms", "peak_rss_mb"), strict=True):
        for b in sorted({r["batch"] for r in rows}):
            rs = [r for r in rows if r["batch"] == b]
            ts = [r["time"] for r in rs]
            for who, style in (("samediff_py", "o-"), ("PyTorch full", "x--"), ("PyTorch counted", "+:")):
                ys = [med(r["cases"].get(who, {}).get(key, [])) for r in rs]
                if all(math.isfinite(y) for y in ys):
                    ax.plot(ts, ys, style, label=f"{who} b={b}")
        ax.set(xscale="log", yscale="log", xlabel="time (sequence length)", title=key)
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def _header(R: dict) -> list[str]:
    m = R["machine"]
    ran = R.get("sections_run")
    return [
        "# samediff_py benchmarks",
        "",
        "Generated by `./dev bench`"
        + (" --quick (small sizes and repeat counts: indicative only)" if R["quick"] else "")
        + f" in {R['seconds'] / 60:.1f} min"
        + (f" (sections run in this pass: {', '.join(ran)})" if ran and len(ran) < len(SECTIONS) else "")
        + ". Every figure is a median after warm-up; every ratio compares figures measured in this same run. "
        "Other processes may share the machine: load averages below.",
        "",
        table(
            ["machine", ""],
            [
                ["CPU", f"{m['cpu']} ({m['cores']} cores; {m['simd']})"],
                ["JDK", m["jdk"]],
                ["Python", m["python"]],
                ["nd4j classifier (jars/)", m["classifier"]],
                ["nd4j threads (SAMEDIFF_PY_THREADS)", m["threads"]],
                [
                    "load average (1, 5, 15 min) start / end",
                    f"{' '.join(f(x, 2) for x in m['load_start'])} / {' '.join(f(x, 2) for x in m['load_end'])}",
                ],
            ],
        ),
        "",
    ]


def _models(R: dict) -> list[str]:
    md = R["models"]
    c = md["config"]
    L = [
        "## MLM encoder: samediff_py vs plain Java vs PyTorch",
        "",
        f"vocab {c['vocab']}, width {c['width']}, {c['heads']} heads, d_ff {c['d_ff']}, {c['layers']} block, batch "
        f"{c['batch']}, time {c['time']} (packed), masked cross-entropy over MASK positions, Adam; "
        f"{md['threads']} thread(s) everywhere. Training step = forward + backward + update; inference = logits. "
        "samediff_py trains through `Encoder.mlm` (vocabulary projection and loss on the counted rows); "
        f"median over {md.get('rounds', 1)} rounds in which the drivers take turns (range in brackets).",
        "",
    ]
    rows = []
    base = md["samediff_py"]
    for k, name in (
        ("samediff_py", "samediff_py (Trainer.step / Graph.run)"),
        ("java", "same graph from plain Java (ModelLoop)"),
        ("pytorch", f"PyTorch {md.get('pytorch', {}).get('torch', '')} CPU, full logits"),
        ("pytorch_counted", "PyTorch, counted rows before the projection"),
    ):
        r = md.get(k)
        if not r:
            rows.append([name, "not run", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                rng(r.get("train_ms_rounds", [r["train_ms"]]), 1),
                f(r["train_tok_s"], 0),
                f(base["train_ms"] / r["train_ms"], 2),
                rng(r.get("infer_ms_rounds", [r["infer_ms"]]), 1),
                f(base["infer_ms"] / r["infer_ms"], 2),
            ]
        )
    L += [
        table(
            [
                "driver",
                "train ms/step",
                "train tokens/s",
                "samediff_py time / this",
                "infer ms/step",
                "samediff_py time / this",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    return L


def _threads_report(R: dict) -> list[str]:
    th = R["threads"]
    mt = {n: sorted(x["train_ms"] for x in v)[len(v) // 2] for n, v in th.items()}
    mi = {n: sorted(x["infer_ms"] for x in v)[len(v) // 2] for n, v in th.items()}
    L = [
        "## Threads (nd4j OpenMP, SAMEDIFF_PY_THREADS)",
        "",
        table(["threads", "train ms/step", "infer ms/step"], [[n, f(mt[n]), f(mi[n])] for n in sorted(mt)]),
        "",
        f"2 threads / 1 thread: training {mt['2'] / mt['1']:.2f}x the time, inference {mi['2'] / mi['1']:.2f}x.",
    ]
    if "torch_threads" in R:
        tt = {str(k): v for k, v in R["torch_threads"].items()}
        L.append(
            f"PyTorch, same model: 2 / 1 threads = {tt['2']['train_ms'] / tt['1']['train_ms']:.2f}x (training), "
            f"{tt['2']['infer_ms'] / tt['1']['infer_ms']:.2f}x (inference)."
        )
    return L + [""]


def _backends_report(R: dict) -> list[str]:
    rows = []
    ref = R["backends"].get("linux-x86_64", {}).get("train_ms")
    for cls, r in R["backends"].items():
        if "error" in r:
            rows.append([cls, "failed: " + r["error"], "", ""])
        else:
            rows.append([cls, f(r["train_ms"]), f(r["infer_ms"]), f(ref / r["train_ms"], 2) if ref else ""])
    note = R.get("backends_note")
    return [
        "## Backends (nd4j native classifier, training step, 1 thread)",
        "",
        *([note, ""] if note else []),
        table(["classifier", "train ms/step", "infer ms/step", "speed-up vs linux-x86_64 (train)"], rows),
        "",
    ]


def _startup(R: dict) -> list[str]:
    s = R["startup"]
    return [
        "## Start-up (fresh process, median of {})".format(s["runs"]),
        "",
        table(
            ["part", "seconds"],
            [
                ["import samediff_py (+ numpy)", f(s["import_s"], 3)],
                ["JVM start + nd4j backend load", f(s["jvm_s"], 3)],
                ["first graph built and run", f(s["first_run_s"], 3)],
                ["total", f(s["total_s"], 3)],
            ],
        ),
        "",
    ]


def _recurrent(R: dict) -> list[str]:
    import bench_recurrent

    return [
        "## Masked LSTM and masked conv1d stack vs PyTorch (bench_recurrent.py)",
        "",
        bench_recurrent.report(R["recurrent"]),
        "",
    ]


def _padding(R: dict) -> list[str]:
    p = R["padding"]
    return [
        "## Padding waste: padded to the longest vs bucketed by length",
        "",
        f"{p['rows']} rows, lengths uniform in [16, 128] ({p['real_tokens']} real tokens), batch 32, the MLM "
        "training step; bucketing = `samediff_py.batching.bucket_batches` + `pad_batch(multiple=8)`.",
        "",
        table(
            ["batches", "padding share", "epoch s", "real tokens/s"],
            [
                [k, f"{v['padding_share']:.0%}", f(v["epoch_s"], 2), f(v["real_tok_s"], 0)]
                for k, v in p["plans"].items()
            ],
        ),
        "",
        f"bucketed / padded real tokens per second: {p['bucketed_vs_padded']:.2f}x.",
        "",
    ]


def _cfg(c: dict) -> str:
    return (
        f"vocab {c['vocab']}, width {c['width']}, {c['heads']} heads, d_ff {c['d_ff']}, {c['layers']} block(s), "
        f"batch {c['batch']} x time {c['time']}"
    )


def _bert(R: dict) -> list[str]:
    b = R["bert_vocab"]
    cases = dict(b["cases"])
    if b.get("before"):
        cases["samediff_py before issue 10 (one-hot loss, full logits; 1 round)"] = b["before"]
    full = cases.get("PyTorch (full logits)", {})
    counted = cases.get("PyTorch (counted rows)", {})
    rows = []
    for name, r in cases.items():
        if "error" in r and not r.get("train_ms"):
            rows.append([name, "failed: " + r["error"][:80], "", "", "", ""])
            continue
        t, m = med(r["train_ms"]), med(r["peak_rss_mb"])
        rows.append(
            [
                name,
                rng(r["train_ms"]),
                rng(r["peak_rss_mb"]),
                f(t / med(full["train_ms"]), 2) if full.get("train_ms") else "",
                f(t / med(counted["train_ms"]), 2) if counted.get("train_ms") else "",
                f(m / med(full["peak_rss_mb"]), 2) if full.get("peak_rss_mb") else "",
            ]
        )
    n = len(next(iter(b["cases"].values())).get("train_ms", []))
    return [
        "## A BERT vocabulary: samediff_py vs two PyTorch twins (bench_vocab.py --what bert)",
        "",
        f"{_cfg(b['config'])}, 15 % MLM targets, Adam, 1 thread. Each variant in its own process (peak RSS = "
        f"the process's `ru_maxrss`, JVM or Python + torch included), {n} rounds in which the variants take "
        "turns; median (min-max) over rounds of each process's median step. Ratios of medians.",
        "",
        table(
            [
                "variant",
                "train ms/step",
                "peak RSS MB",
                "time / PyTorch full",
                "time / PyTorch counted",
                "RSS / PyTorch full",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def _loss(R: dict) -> list[str]:
    b = R["loss"]
    c = b["config"]
    rows = [[name, rng(r.get("train_ms", [])), rng(r.get("peak_rss_mb", []))] if r.get("train_ms")
            else [name, "failed: " + r.get("error", "?")[:80], ""] for name, r in b["cases"].items()]  # fmt: skip
    return [
        "## Cross-entropy formulations at a BERT vocabulary (bench_vocab.py --what loss)",
        "",
        f"Head and loss alone: hidden states `[{c['batch']}, {c['time']}, {c['width']}]` in, a `[{c['width']}, "
        f"{c['vocab']}]` projection, the masked loss, one SGD step (Trainer); 15 % of positions count. Each variant "
        "in its own process; median (min-max) over rounds.",
        "",
        table(["formulation", "step ms", "peak RSS MB"], rows),
        "",
    ]


def _ratio_rows(rows: list[dict], label) -> tuple[list[list[str]], list[str]]:
    out, ratios = [], {"train": [], "train_c": [], "infer": [], "rss": []}
    for row in rows:
        sd, pf, pc = (row["cases"].get(k, {}) for k in ("samediff_py", "PyTorch full", "PyTorch counted"))
        if not sd.get("train_ms") or not pf.get("train_ms"):
            out.append([label(row), "not run", "", "", "", "", "", "", ""])
            continue
        tr = med(sd["train_ms"]) / med(pf["train_ms"])
        trc = med(sd["train_ms"]) / med(pc["train_ms"]) if pc.get("train_ms") else math.nan
        inf = med(sd["infer_ms"]) / med(pf["infer_ms"]) if sd.get("infer_ms") and pf.get("infer_ms") else math.nan
        rs = med(sd["peak_rss_mb"]) / med(pf["peak_rss_mb"])
        for k, v in (("train", tr), ("train_c", trc), ("infer", inf), ("rss", rs)):
            ratios[k].append(v)
        out.append(
            [
                label(row),
                rng(sd["train_ms"], 1),
                rng(pf["train_ms"], 1),
                rng(pc.get("train_ms", []), 1),
                f(tr, 2),
                f(trc, 2),
                f(inf, 2),
                rng(sd["peak_rss_mb"]),
                f(rs, 2),
            ]
        )
    notes = []
    for k, what in (("train", "training vs PyTorch full"), ("train_c", "training vs PyTorch counted"),
                    ("infer", "inference"), ("rss", "peak RSS")):  # fmt: skip
        v = [x for x in ratios[k] if math.isfinite(x)]
        if v:
            m = statistics.median(v)
            worst = max(v)
            notes.append(f"{what}: median ratio {m:.2f}, worst {worst:.2f} = {worst / m:.2f}x the median")
    return out, notes


RATIO_HEAD = ["", "samediff_py train ms", "PyTorch full train ms", "PyTorch counted train ms", "train / full",
              "train / counted", "infer / full", "samediff_py peak RSS MB", "RSS / full"]  # fmt: skip


def _vocab_report(R: dict) -> list[str]:
    v = R["vocab"]
    rows, notes = _ratio_rows(v["rows"], lambda r: f"vocab {r['vocab']}")
    return [
        "## Vocabulary sweep (bench_vocab.py --what vocab)",
        "",
        f"{_cfg(dict(v['config'], vocab='*'))}; each variant in its own process, median (min-max) over rounds.",
        "",
        table(["vocab", *RATIO_HEAD[1:]], rows),
        "",
        *(f"- {n}" for n in notes),
        "",
    ]


def _scaling(R: dict) -> list[str]:
    v = R["scaling"]
    if "rows" not in v or not v["rows"] or "cases" not in v["rows"][0]:
        return ["## Scaling", "", "(an older format: re-run this section)", ""]
    rows, notes = _ratio_rows(v["rows"], lambda r: f"{r['batch']} x {r['time']}")
    L = [
        "## Scaling (batch x time; bench_vocab.py --what grid)",
        "",
        f"{_cfg(dict(v['config'], batch='*', time='*'))}; each point and variant in its own process, median "
        "(min-max) over rounds; inference = the full logits.",
        "",
        table(["batch x time", *RATIO_HEAD[1:]], rows),
        "",
        *(f"- {n}" for n in notes),
        "",
    ]
    if R.get("plot"):
        L += ["![scaling](scaling.png)", ""]
    return L


def _transfer(R: dict) -> list[str]:
    t = R["transfer"]
    rows = [
        [k, f(v["in_vs_copyto"], 2), f(v["out_vs_copy"], 2), f(v["wrap_us"], 1)]
        for k, v in ((int(k), v) for k, v in t["sizes"].items())
    ]
    rows = [[f"{int(r[0]) >> 10} KiB", *r[1:]] for r in rows]
    return [
        "## numpy <-> INDArray transfer (bench_transfer.py)",
        "",
        table(["float32 size", "to_indarray vs np.copyto", "to_numpy vs arr.copy()", "wrap us"], rows),
        "",
        f"Graph.run of a tiny graph: {t['tiny_graph_run_us']:.0f} us per call. Ratios: numpy's time / ours "
        "(1.00 = numpy's own copy speed).",
        "",
    ]


def _train_loop(R: dict) -> list[str]:
    tl = R["train_loop"]
    rows = [
        [name, f"{r['params']:,}", r["batch"], f(r["python_us_per_step"] / 1e3, 2),
         f(r["java_loss_us_per_step"] / 1e3, 2), f(r["ratio_vs_loss"], 3), f(r["java_plain_us_per_step"] / 1e3, 2),
         f(r["ratio_vs_plain"], 3)]
        for name, r in tl.items()
    ]  # fmt: skip
    return [
        "## Training step of MLPs: driven from Python vs by a plain-Java loop (bench_train.py)",
        "",
        "Same saved graph, same batches. `Java + loss` records the loss value each step as samediff_py does "
        "(one extra op); `Java plain` skips it, as M2.1's `fit` does by default.",
        "",
        table(["model", "params", "batch", "Python ms", "Java + loss ms", "ratio", "Java plain ms", "ratio"], rows),
        "",
    ]


def _attention(R: dict) -> list[str]:
    import bench_attention

    return ["## Attention formulations inside one encoder block (bench_attention.py)", "",
            bench_attention.report(R["attention"]), ""]  # fmt: skip


def _distributed_report(R: dict) -> list[str]:
    import bench_distributed

    return [bench_distributed.report(R["distributed"], R.get("launcher")), ""]


REPORTS = [
    ("models", _models),
    ("bert_vocab", _bert),
    ("loss", _loss),
    ("vocab", _vocab_report),
    ("scaling", _scaling),
    ("attention", _attention),
    ("recurrent", _recurrent),
    ("threads", _threads_report),
    ("backends", _backends_report),
    ("startup", _startup),
    ("padding", _padding),
    ("transfer", _transfer),
    ("train_loop", _train_loop),
    ("distributed", _distributed_report),
]


def report(R: dict) -> str:
    L = _header(R)
    for key, fn in REPORTS:
        if key in R:
            try:
                L += fn(R)
            except (KeyError, TypeError) as e:  # a section saved in an older format
                L += [f"## {key}", "", f"(saved in an older format, not shown: {e!r}; re-run it)", ""]
    L += ["## Findings", "", "FINDINGS", ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description="all samediff_py benchmarks -> bench/RESULTS.md")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    ap.add_argument("--json", default=str(ROOT / "build" / "bench-results.json"))
    ap.add_argument("--from-json", help="only re-write the report from a saved run")
    ap.add_argument("--only", help=f"comma-separated sections to run: {', '.join(SECTIONS)}")
    ap.add_argument("--merge", help="a saved run's JSON whose other sections are kept")
    a = ap.parse_args()
    if a.from_json:
        R = json.loads(Path(a.from_json).read_text())
    else:
        only = a.only.split(",") if a.only else None
        if only and set(only) - set(SECTIONS):
            ap.error(f"unknown sections {sorted(set(only) - set(SECTIONS))}")
        previous = json.loads(Path(a.merge).read_text()) if a.merge and Path(a.merge).exists() else None
        R = run_all(a.quick, only, previous)
        Path(a.json).parent.mkdir(exist_ok=True)
        Path(a.json).write_text(json.dumps(R, indent=1, default=str))
    out = Path(a.out)
    R["plot"] = plot(R, out.parent / "scaling.png")
    text = report(R)
    findings = BENCH / "FINDINGS.md"
    text = text.replace("FINDINGS", findings.read_text().strip() if findings.exists() else "(none written)")
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
