#!/usr/bin/env bash
# GPU check (issue 10, item 5): cifar10-resnet8 on small CIFAR-10-format data, on CUDA through the
# CLI and through a job (the app's path: JobManager + a worker process), against the same run on
# the CPU. Prints the timings and each compared number; exits 1 if a check fails, 2 without CUDA.
#
#   bash benchmarks/gpu_check.sh            (from the repository root; ~1-3 minutes on one GPU)
#   RESX_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   (a dry run of the plumbing, CPU only)
#
# Tolerances (stated, not tuned): CUDA and CPU kernels sum in different orders and cuDNN picks
# its own algorithms, so a few epochs of SGD drift apart a little:
#   - function preservation: max |logit difference| at insertion <= 1e-4 on every device (exact
#     by construction up to float32 rounding);
#   - CUDA (CLI) vs CPU (CLI): |L_S|, |L_T| of f_old, f_new and control differ by <= 0.05 nats,
#     and the chosen insertion position's descent margin U_P agrees in sign or is below 2 se;
#   - CUDA via a job vs CUDA via the CLI: the same losses within 1e-3 (same device, same seed);
#   - resx.diagnose on torchvision's resnet18 (issue 26; 3x32x32 random inputs, 512 train and probe
#     points, 64 in the dry run), the same inputs on each device: preservation <= 1e-4 on both; every
#     position's one-sided slope D_P2(d_hat) within 0.1 of its standard error (convolutions round
#     differently, TF32 included, and d_hat is an exact minimiser of the rounded statistics, so the
#     slopes agree to a small fraction of their sampling error, not bit for bit); the same
#     Bonferroni pick, or picks whose corrected UCBs are within 0.1 se.
set -euo pipefail
cd "$(dirname "$0")/.."
export RESX_HOME="$(mktemp -d)"
export RESX_DATA_DIR="$RESX_HOME/data"
trap 'rm -rf "$RESX_HOME"' EXIT
python - <<'PY'
import json, os, subprocess, sys, time
from pathlib import Path

import torch
GPU = os.environ.get("RESX_GPU_CHECK_DEVICE", "cuda")  # "cpu": a dry run of this script's plumbing
if GPU == "cuda" and not torch.cuda.is_available():
    print("no CUDA device: nothing to check"); sys.exit(2)
sys.path.insert(0, ".")
from benchmarks.bench_train import write_cifar10
from resx.core.config import PRESETS
from resx.runs.jobs import JobManager
from resx.runs.store import Store
from resx.runs.workers import WorkerPool

home, data = Path(os.environ["RESX_HOME"]), Path(os.environ["RESX_DATA_DIR"])
md5 = write_cifar10(data, per_file=400, test=600, seed=0)   # 2,000 train and 600 test images, real format
# torchvision checks the files' md5 against the real CIFAR-10's: every process of this check (the
# CLI's, the job's worker) loads a sitecustomize that swaps in these files' sums, nothing else.
site = home / "site"
site.mkdir()
(site / "sitecustomize.py").write_text(
    "import json, os\n"
    "md5 = json.loads(os.environ['RESX_GPU_CHECK_MD5'])\n"
    "import torchvision.datasets as tvd\n"
    "c = tvd.CIFAR10\n"
    "c.train_list = [[n, md5[n]] for n, _ in c.train_list]\n"
    "c.test_list = [[n, md5[n]] for n, _ in c.test_list]\n"
    "c.meta = {**c.meta, 'md5': md5[c.meta['filename']]}\n")
os.environ["RESX_GPU_CHECK_MD5"] = json.dumps(md5)
os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.getcwd(), os.environ.get("PYTHONPATH", "")])
sys.path.insert(0, str(site))
import sitecustomize  # noqa: F401  (this process too: the job's worker is spawned from it)
SMALL = dict(n=2000, n_probe=200, n_test=400, epochs=3, finetune_epochs=1, augment=False)
print("device:", torch.cuda.get_device_name(0) if GPU == "cuda" else "cpu (dry run)", "| torch", torch.__version__)

def cli(device):
    out = home / f"cli-{device}"
    args = [sys.executable, "-m", "resx", "run", "--preset", "cifar10-resnet8", "--no-store", "--out", str(out),
            "--set", f"device={device}"] + [a for k, v in SMALL.items() for a in ("--set", f"{k}={str(v).lower()}")]
    t0 = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    return time.monotonic() - t0, json.loads((out / "result.json").read_text())

def job(device):
    store = Store(home / "store")
    pool = WorkerPool(1, torch_threads=max(1, os.cpu_count() // 2))
    manager = JobManager(store, pool, workers=1, torch_threads=1)
    try:
        t0 = time.monotonic()
        run_id = manager.submit(PRESETS["cifar10-resnet8"].replace(device=device, **SMALL), source="gpu_check")
        snap = manager.wait(run_id, timeout=1200)
        assert snap.status == "done", (snap.status, snap.message)
        return time.monotonic() - t0, snap.result
    finally:
        manager.shutdown(timeout=30)
        store.close()

runs = {}
for name, fn, device in (("cli_cpu", cli, "cpu"), ("cli_cuda", cli, GPU), ("job_cuda", job, GPU)):
    seconds, result = fn(device)
    runs[name] = result
    print(f"{name:9s} {seconds:7.1f} s wall | timings {result['timings']} | device {result['device']}")

failures = []
def check(ok, text):
    print(("ok   " if ok else "FAIL ") + text)
    if not ok:
        failures.append(text)

for name, r in runs.items():
    d = r["insertion"]["max_abs_logit_diff"]
    check(d <= 1e-4, f"{name}: function preserved at insertion, max |logit diff| = {d:.2e} <= 1e-4")
for model in ("old", "new", "control"):
    for key in ("L_S", "L_T"):
        a, b, c = runs["cli_cpu"][model][key], runs["cli_cuda"][model][key], runs["job_cuda"][model][key]
        check(abs(a - b) <= 0.05, f"{model}.{key}: CPU {a:.4f} vs CUDA {b:.4f} (|diff| {abs(a - b):.4f} <= 0.05)")
        check(abs(b - c) <= 1e-3, f"{model}.{key}: CUDA CLI {b:.5f} vs CUDA job {c:.5f} (|diff| {abs(b - c):.1e} <= 1e-3)")
pos = runs["cli_cpu"]["config"]["position"]
def margin(r):
    m = next(m for m in r["margins"] if m.get("position") == pos)
    return m["kappa2_U"], m["kappa2_U_se"]  # U_P and its se (result.json's margins, THEORY.md 4)
(u0, se0), (u1, se1) = margin(runs["cli_cpu"]), margin(runs["cli_cuda"])
check((u0 > 0) == (u1 > 0) or abs(u0 - u1) <= 2 * max(se0, se1),
      f"descent margin U_P at position {pos}: CPU {u0:.3g} (se {se0:.2g}) vs CUDA {u1:.3g} (se {se1:.2g})")
from benchmarks.bench_theory import own_network_problem
from resx.theory.diagnose import diagnose
N = 512 if GPU == "cuda" else 64
model, x, y, xp, yp = own_network_problem(N, N)
found = {}
for device in ("cpu", GPU):
    t0 = time.monotonic()
    found[device] = diagnose(model.to(device), x, y, xp, yp)
    print(f"diagnose {device:4s} {time.monotonic() - t0:6.1f} s wall (resnet18, 32x32, {N} train and probe points)")
cpu, gpu = found["cpu"], found[GPU]
for device, r in (("cpu", cpu), (GPU + " ", gpu)):
    check(r["preservation"] <= 1e-4, f"diagnose on {device}: preservation {r['preservation']:.2e} <= 1e-4")
worst = max([abs(a["slope_cross"] - b["slope_cross"]) / a["slope_cross_se"]
             for a, b in zip(cpu["positions"], gpu["positions"]) if a["slope_cross_se"] == a["slope_cross_se"]] or [0.0])
check(worst <= 0.1, f"diagnose: every position's slope_cross CPU vs {GPU} within {worst:.3g} se <= 0.1 se")
pa, pb = cpu["best"], gpu["best"]
se_best = next(r["slope_cross_se"] for r in cpu["positions"] if r["position"] == pa["position"])
check(pa["position"] == pb["position"] or abs(pa["ucb"] - pb["ucb"]) <= 0.1 * se_best,
      f"diagnose: Bonferroni pick CPU {pa['position']} vs {GPU} {pb['position']}")
print("FAILED:" if failures else "all checks passed", *failures, sep="\n  ")
sys.exit(1 if failures else 0)
PY
