"""Every benchmark in one command; writes bench/RESULTS.md (and bench/scaling.png).

    ./dev bench            # full run (~10-15 min on 2 cores)
    ./dev bench --quick    # ~2 min, small repeat counts (what tests/test_bench_smoke.py runs)

Each part runs in a fresh Python process (one JVM each, so the nd4j build and thread count can differ) and
reports JSON; comparisons are ratios of medians measured in this same run. PyTorch runs in the benchmark's
own venv (build/bench-venv, from bench/requirements.txt) and is skipped when that venv has no torch.
Backends: each nd4j classifier is fetched into build/jars-<classifier>/ (gradle fetchJars -PjarsDir=...).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
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


def sub(code_or_args: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
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


def run_all(quick: bool) -> dict:
    q = ["--quick"] if quick else []
    R: dict = {"quick": quick, "machine": machine()}
    t0 = time.perf_counter()
    log("transfer")
    R["transfer"] = py_main("bench_transfer", quick)
    log("models: samediff_py vs Java vs PyTorch")
    R["models"] = sub(["bench/bench_models.py", *q])
    log("threads: 1 vs 2")
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
    log("backends")
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
    log("training step driven from Python vs plain Java (MLPs)")
    R["train_loop"] = py_main("bench_train", quick)
    log("attention: fused DL4J op vs a chain of plain ops")
    R["attention"] = py_main("bench_attention", quick)
    log("startup")
    R["startup"] = py_main("bench_startup", quick)
    log("padding")
    R["padding"] = py_main("bench_padding", quick)
    log("scaling")
    R["scaling"] = sub(["bench/bench_models.py", "--what", "scaling", *q])
    if importlib.util.find_spec("ray") is not None:  # the [distributed] extra
        log("data-parallel training on Ray")
        R["distributed"] = sub(["bench/bench_distributed.py", *q])
        R["launcher"] = sub(["bench/bench_launcher.py", *q])
    R["machine"]["load_end"] = os.getloadavg()
    R["seconds"] = time.perf_counter() - t0
    return R


# ------------------------------------------------------------------------------------------- report
def f(x: float, d: int = 1) -> str:
    return f"{x:,.{d}f}"


def plot(R: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = R["scaling"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("train_ms", "infer_ms"), strict=True):
        for b in sorted({r["batch"] for r in rows}):
            rs = [r for r in rows if r["batch"] == b]
            ts = [r["time"] for r in rs]
            ax.plot(ts, [r["samediff_py"][key] for r in rs], "o-", label=f"samediff_py b={b}")
            if all("pytorch" in r for r in rs):
                ax.plot(ts, [r["pytorch"][key] for r in rs], "x--", label=f"PyTorch b={b}")
        ax.set(xscale="log", yscale="log", xlabel="time (sequence length)", ylabel="ms per step", title=key[:-3])
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def report(R: dict) -> str:
    m = R["machine"]
    L = [
        "# samediff_py benchmarks",
        "",
        "Generated by `./dev bench`"
        + (" --quick (small repeat counts: indicative only)" if R["quick"] else "")
        + f" in {R['seconds'] / 60:.1f} min. Every figure is a median after warm-up; every ratio compares",
        "figures measured in this same run. Other processes may share the machine: load averages below.",
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
    md = R["models"]
    c = md["config"]
    L += [
        "## MLM encoder: samediff_py vs plain Java vs PyTorch",
        "",
        f"vocab {c['vocab']}, width {c['width']}, {c['heads']} heads, d_ff {c['d_ff']}, {c['layers']} block, batch "
        f"{c['batch']}, time {c['time']} (packed), masked cross-entropy over MASK positions, Adam; "
        f"{md['threads']} thread(s) everywhere. Training step = forward + backward + update; inference = logits.",
        "",
    ]
    rows = []
    base = md["samediff_py"]
    for k, name in (
        ("samediff_py", "samediff_py (Trainer.step / Graph.run)"),
        ("java", "same graph from plain Java (ModelLoop)"),
        ("pytorch", f"PyTorch {md.get('pytorch', {}).get('torch', '')} CPU"),
    ):
        r = md.get(k)
        if not r:
            rows.append([name, "not run", "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                f(r["train_ms"]),
                f(r["train_tok_s"], 0),
                f(base["train_ms"] / r["train_ms"], 2),
                f(r["infer_ms"]),
                f(r["infer_tok_s"], 0),
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
                "infer tokens/s",
                "samediff_py time / this",
            ],
            rows,
        ),
        "",
    ]

    th = R["threads"]
    med = {n: sorted(x["train_ms"] for x in v)[len(v) // 2] for n, v in th.items()}
    medi = {n: sorted(x["infer_ms"] for x in v)[len(v) // 2] for n, v in th.items()}
    L += [
        "## Threads (nd4j OpenMP, SAMEDIFF_PY_THREADS)",
        "",
        table(["threads", "train ms/step", "infer ms/step"], [[n, f(med[n]), f(medi[n])] for n in sorted(med)]),
        "",
        f"2 threads / 1 thread: training {med['2'] / med['1']:.2f}x the time, inference {medi['2'] / medi['1']:.2f}x.",
    ]
    if "torch_threads" in R:
        tt = {str(k): v for k, v in R["torch_threads"].items()}
        L.append(
            f"PyTorch, same model: 2 / 1 threads = {tt['2']['train_ms'] / tt['1']['train_ms']:.2f}x (training), "
            f"{tt['2']['infer_ms'] / tt['1']['infer_ms']:.2f}x (inference)."
        )
    L.append("")

    L += ["## Backends (nd4j native classifier, training step, 1 thread)", ""]
    rows = []
    ref = R["backends"].get("linux-x86_64", {}).get("train_ms")
    for cls, r in R["backends"].items():
        if "error" in r:
            rows.append([cls, "failed: " + r["error"], "", ""])
        else:
            rows.append([cls, f(r["train_ms"]), f(r["infer_ms"]), f(ref / r["train_ms"], 2) if ref else ""])
    L += [table(["classifier", "train ms/step", "infer ms/step", "speed-up vs linux-x86_64 (train)"], rows), ""]

    s = R["startup"]
    L += [
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

    p = R["padding"]
    L += [
        "## Padding waste: padded to the longest vs bucketed by length",
        "",
        f"{p['rows']} rows, lengths uniform in [16, 128] ({p['real_tokens']} real tokens), batch 32, the MLM "
        "training step; bucketing = `samediff_py.batching.bucket_batches` + `pad_batch(multiple=8)`.",
        "",
    ]
    L += [
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

    rows = []
    for r in R["scaling"]["rows"]:
        sd, pt = r["samediff_py"], r.get("pytorch")
        rows.append(
            [
                f"{r['batch']} x {r['time']}",
                f(sd["train_ms"]),
                f(pt["train_ms"]) if pt else "",
                f(sd["train_ms"] / pt["train_ms"], 1) if pt else "",
                f(sd["infer_ms"]),
                f(pt["infer_ms"]) if pt else "",
                f(sd["infer_ms"] / pt["infer_ms"], 1) if pt else "",
            ]
        )
    L += [
        "## Scaling (ms per step; batch x time)",
        "",
        table(
            [
                "batch x time",
                "samediff_py train",
                "PyTorch train",
                "ratio",
                "samediff_py infer",
                "PyTorch infer",
                "ratio",
            ],
            rows,
        ),
        "",
    ]
    if R.get("plot"):
        L += ["![scaling](scaling.png)", ""]

    if R.get("distributed"):
        import bench_distributed

        L += [bench_distributed.report(R["distributed"], R.get("launcher")), ""]

    t = R["transfer"]
    rows = [
        [k, f(v["in_vs_copyto"], 2), f(v["out_vs_copy"], 2), f(v["wrap_us"], 1)]
        for k, v in ((int(k), v) for k, v in t["sizes"].items())
    ]
    rows = [[f"{int(r[0]) >> 10} KiB", *r[1:]] for r in rows]
    L += [
        "## numpy <-> INDArray transfer (bench_transfer.py)",
        "",
        table(["float32 size", "to_indarray vs np.copyto", "to_numpy vs arr.copy()", "wrap us"], rows),
        "",
        f"Graph.run of a tiny graph: {t['tiny_graph_run_us']:.0f} us per call. Ratios: numpy's time / ours "
        "(1.00 = numpy's own copy speed).",
        "",
    ]
    tl = R.get("train_loop")
    if tl:
        rows = [
            [
                name,
                f"{r['params']:,}",
                r["batch"],
                f(r["python_us_per_step"] / 1e3, 2),
                f(r["java_loss_us_per_step"] / 1e3, 2),
                f(r["ratio_vs_loss"], 3),
                f(r["java_plain_us_per_step"] / 1e3, 2),
                f(r["ratio_vs_plain"], 3),
            ]
            for name, r in tl.items()
        ]
        L += [
            "## Training step of MLPs: driven from Python vs by a plain-Java loop (bench_train.py)",
            "",
            "Same saved graph, same batches. `Java + loss` records the loss value each step as samediff_py does "
            "(one extra op); `Java plain` skips it, as M2.1's `fit` does by default.",
            "",
            table(
                ["model", "params", "batch", "Python ms", "Java + loss ms", "ratio", "Java plain ms", "ratio"],
                rows,
            ),
            "",
        ]
    at = R.get("attention")
    if at:
        L += [
            "## Attention: fused DL4J op vs the same block built from plain ops (bench_attention.py)",
            "",
            f"One encoder block, batch {at['batch']}, time {at['time']}, width {at['width']}, {at['heads']} heads: "
            f"forward + backward {f(at['fused_fwd_bwd_s'] * 1e3)} ms fused vs {f(at['unfused_fwd_bwd_s'] * 1e3)} ms "
            f"unfused ({at['ratio_fwd_bwd']:.2f}x); forward {f(at['fused_fwd_s'] * 1e3)} vs "
            f"{f(at['unfused_fwd_s'] * 1e3)} ms ({at['ratio_fwd']:.2f}x). Both give the same loss and gradients "
            f"(max |gradient difference| {at['grad_max_abs_diff']:.1e} at scale {at['grad_max_abs']:.1e}).",
            "",
        ]
    L += ["## Findings", "", "FINDINGS", ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description="all samediff_py benchmarks -> bench/RESULTS.md")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    ap.add_argument("--json", default=str(ROOT / "build" / "bench-results.json"))
    ap.add_argument("--from-json", help="only re-write the report from a saved run")
    a = ap.parse_args()
    if a.from_json:
        R = json.loads(Path(a.from_json).read_text())
    else:
        R = run_all(a.quick)
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
