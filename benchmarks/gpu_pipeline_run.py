"""One prepared GPU measurement of the data pipeline and k-means (issue 14), written to $OUT.

Steps: generate N 500×375 JPEGs in class folders (parallel); the decode limit (``read_image``
in P processes); the DeiT-S forward limit (fp32, bf16); extraction through the ``bench run``
path (registry factory → ``configure`` → ``FeatureStore.features``) with CPU decode in workers
(fp32) and with GPU decode (fp32 and bf16); GPU-vs-CPU-decode and bf16-vs-fp32 feature
agreement; k-means at faiss' benchmark shape and at QRP's, float32 vs TF32 tensor cores.

``python benchmarks/gpu_pipeline_run.py [--small]``: --small runs tiny sizes on the CPU (a
check of the script itself). Results: $OUT/gpu_results.json (and the printed log).
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

SMALL = "--small" in sys.argv
OUT = Path(os.environ.get("OUT") or "/tmp/gpu14_out")
OUT.mkdir(parents=True, exist_ok=True)
DEV = "cpu" if SMALL else "cuda"
N_IMAGES = 48 if SMALL else 8000
PROCS = 2 if SMALL else 16
BATCH = 16 if SMALL else 256
RESULTS: dict = {"small": SMALL, "n_images": N_IMAGES, "procs": PROCS, "batch": BATCH}


def save():
    (OUT / "gpu_results.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def log(key, value):
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)
    save()


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _read(path):
    from bench.datasets.real import read_image

    return read_image(path).shape


def main():
    from bench.datasets.real import imagefolder_source
    from benchmarks.jpeg_folder import make_folder

    log("torch", torch.__version__)
    if DEV == "cuda":
        log("gpu", torch.cuda.get_device_name())
    root = Path("/tmp/jpg14")
    t0 = time.perf_counter()
    make_folder(root, N_IMAGES, procs=PROCS)
    log("generate_s", round(time.perf_counter() - t0, 1))
    source = imagefolder_source(root)
    sizes = [os.path.getsize(p) for p in source.paths[:200]]
    log("mean_jpeg_kb", round(float(np.mean(sizes)) / 1024, 1))

    # decode limit: read_image (decode, resize 256, crop) in PROCS processes, as in the issue
    with Pool(PROCS) as pool:
        pool.map(_read, source.paths[:PROCS * 4])
        t0 = time.perf_counter()
        pool.map(_read, source.paths, chunksize=32)
        log("decode_limit_img_s", round(source.n / (time.perf_counter() - t0), 1))

    # forward limit, DeiT-S random weights (saved to a file, loaded via --weights like a user)
    import timm

    from bench.extractors.base import full_fp32

    wpath = Path("/tmp/deit_s_random.pth")
    model = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=0)
    torch.save(model.state_dict(), wpath)
    model = model.eval().to(DEV)
    x = torch.randn(BATCH, 3, 224, 224, device=DEV)
    for prec in ("fp32", "bf16"):
        ctx = full_fp32 if prec == "fp32" else (lambda: torch.autocast(DEV, dtype=torch.bfloat16))
        iters = 2 if SMALL else 20
        with torch.inference_mode(), ctx():
            for _ in range(2 if SMALL else 5):
                model(x)
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                model(x)
            sync()
        log(f"forward_limit_{prec}_img_s", round(iters * BATCH / (time.perf_counter() - t0), 1))
    del model, x

    # extraction through the bench-run path
    from bench import plugins
    from bench.features import FeatureStore

    regs = plugins.load()
    factory = regs.extractors.get("deit-s")
    feats = {}
    warm = source.subset(np.arange(min(source.n, BATCH * 2)))
    for decode, prec in (("cpu", "fp32"), ("gpu", "fp32"), ("gpu", "bf16")):
        # --small: decode="gpu" runs torchvision's decode_jpeg on the CPU device, the same code path
        ext = factory(weights=str(wpath), device=DEV).configure(workers=PROCS, precision=prec, decode=decode)
        FeatureStore(None).features(warm, ext, device=DEV, batch_size=BATCH)
        sync()
        t0 = time.perf_counter()
        f = np.asarray(FeatureStore(None).features(source, ext, device=DEV, batch_size=BATCH))
        sync()
        rate = source.n / (time.perf_counter() - t0)
        feats[(decode, prec)] = f
        log(f"extract_{decode}decode_{prec}_img_s", round(rate, 1))
    log("ratio_cpudecode_fp32_vs_min_decode_forward",
        round(RESULTS["extract_cpudecode_fp32_img_s"] / min(RESULTS["decode_limit_img_s"],
                                                           RESULTS["forward_limit_fp32_img_s"]), 3))

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    a, b = feats[("cpu", "fp32")], feats[("gpu", "fp32")]
    c = cos(a, b)
    log("gpu_vs_cpu_decode", {"cos_min": float(c.min()), "cos_mean": float(c.mean()),
                              "max_abs": float(np.abs(a - b).max()),
                              "max_abs_over_feature_std": float(np.abs(a - b).max() / a.std())})
    c = cos(feats[("gpu", "bf16")], b)
    log("bf16_vs_fp32", {"cos_min": float(c.min()), "cos_mean": float(c.mean())})
    del feats

    # k-means: float32 vs TF32 tensor cores with the exact re-check
    from bench.kmeans import lloyd

    shapes = [("faiss_1Mx256_K20000_25it", 1_000_000, 256, 20_000, 25),
              ("qrp_100kx768_K1000_100it", 100_000, 768, 1_000, 100)]
    if SMALL:
        shapes = [("faiss_small", 4000, 32, 50, 5), ("qrp_small", 2000, 64, 20, 10)]
    for name, n, d, k, it in shapes:
        g = torch.Generator(device=DEV).manual_seed(0)
        centres = torch.randn(k // 4 + 1, d, generator=g, device=DEV)
        pick = torch.randint(0, len(centres), (n,), generator=g, device=DEV)
        data = (centres[pick] + 0.5 * torch.randn(n, d, generator=g, device=DEV)).cpu().numpy()
        lloyd(data[:min(n, 50_000)], min(k, 1000), niter=2, device=DEV, gemm="tf32" if DEV == "cuda" else "fp32")
        res = {}
        for gemm in ("fp32", "tf32", "bf16"):
            if SMALL and gemm == "tf32":
                continue
            sync()
            t0 = time.perf_counter()
            r = lloyd(data, k, niter=it, seed=0, device=DEV, gemm=gemm)
            sync()
            res[gemm] = (time.perf_counter() - t0, r)
            log(f"kmeans_{name}_{gemm}_s", round(res[gemm][0], 3))
        ref = res["fp32"][1]
        for gemm, (_, r) in res.items():
            if gemm != "fp32":
                log(f"kmeans_{name}_{gemm}_vs_fp32", {
                    "codes_equal_fraction": float((r.codes == ref.codes).mean()),
                    "inertia_rel_diff": float(abs(r.inertia - ref.inertia) / ref.inertia)})
        del data, res
    log("done", True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
