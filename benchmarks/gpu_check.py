"""The GPU check: every GPU figure this project needs, in one run of a few minutes.

Run it as ``iqa-bench gpu-check``, or through ``benchmarks/scripts/gpu_check.sh`` (which
installs the toolkit from the checkout first). With a CUDA device it measures, with ``iqa-bench``'s own harness
(:func:`qualitynet.bench.run.run_bench`), the ``small`` and ``qualitynet`` configs (and
``lite``, ``deepfeat-lite`` and ``mlms-lite`` where those configs exist) with untrained weights (a Gaussian
process has no untrained state: ``deepfeat-lite`` is fitted on a small generated demo set):
PyTorch eager FP32, FP16 autocast + channels_last, CUDA graphs and ``torch.compile`` (where
they work), ONNX Runtime on every provider the installed build has (the CPU build's rows are
bounded in batch size and time), and TensorRT where it is importable: the ``iqa-export
--fp16`` build with a timing cache (written, reused, then a junk file), ``TrtRunner`` against
ONNX Runtime at batch 1/8/11, the refusal of a plan whose sidecar names another GPU; and
nvImageCodec's GPU decode (``iqa-run --decoder nvimgcodec``) against Pillow on 1024x768 and
camera-size JPEGs: decode images/s, the scores' agreement (SROCC, max and mean abs on the MOS
scale) and ``Scorer``'s end to end rate with each decoder. What cannot run is listed with the
reason.

Results: ``<out>/gpu-<device>.json`` and ``<out>/gpu-<device>.md``. Without a CUDA device it
prints a "no CUDA device" report and exits 0, unless ``--device cpu`` asks for the CPU
rehearsal (``--quick``: the ``tiny`` config, tiny iteration counts; the same code paths).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qualitynet.artifact import ArtifactMeta
from qualitynet.bench.fixtures import untrained_checkpoint
from qualitynet.bench.machine import machine_info
from qualitynet.bench.report import format_table
from qualitynet.bench.run import BenchReport, BenchSettings, run_bench
from qualitynet.bench.subjects import TORCH_VARIANTS, tensorrt_missing
from qualitynet.errors import QualityNetError
from qualitynet.export import export_all, load_photos
from qualitynet.export.types import VerificationError
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.datasets import load_dataset
from qualitynet.trainer.deepfeat import DEEPFEAT_CONFIGS
from qualitynet.trainer.demo_dataset import DEMO_SOURCES, make_demo_dataset
from qualitynet.trainer.mlms import MLMS_CONFIGS
from qualitynet.trainer.model import MODEL_CONFIGS
from qualitynet.trainer.train import TrainSettings, train

__all__ = ["run_gpu_check"]

GPU_CONFIGS = ("small", "qualitynet", "lite", "deepfeat-lite", "mlms-lite")
# torch.compile of the paper model takes minutes per batch shape: beyond this check's budget.
COMPILE_CONFIGS = ("small", "tiny")
# The paper model on ONNX Runtime's CPU provider: ~1 s per batch of 8 on 16 cores.
PAPER_CPU_MAX_BATCH = 8
TRT_BATCHES = (1, 8, 11)


@dataclass
class Check:
    """One step of the TensorRT part: passed, failed (with the error) or skipped (with the reason)."""

    name: str
    status: str
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class GpuCheck:
    """Everything one run measured and why the rest was not."""

    device: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensorrt: list[Check] = field(default_factory=list)
    decode: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


def _checkpoint(work: Path, config: str) -> Path:
    """The config's checkpoint: untrained, or for a Gaussian-process config fitted in seconds on 102 generated
    images (6 photos x 17 versions)."""
    path = work / config / "model.pt"
    if config not in DEEPFEAT_CONFIGS:
        return untrained_checkpoint(path, config)
    if not path.is_file():
        data = make_demo_dataset(work / "demo-data", sources=DEMO_SOURCES[:6], crops=1, scales=(1.0,))
        settings = TrainSettings(config=config, pretrained=True, freeze_backbones=True, quiet=True, workers=0)
        train(load_dataset("csv", csv_path=data), path.parent, settings)
    return path


def _tensorrt_checks(checkpoint: Path, work: Path) -> list[Check]:
    """The ``iqa-export --fp16`` build three ways, TrtRunner vs ONNX Runtime, and a refused plan."""
    missing = tensorrt_missing()
    names = ("build, timing cache written", "build, timing cache reused", "build, junk timing cache",
             "TrtRunner vs ONNX Runtime at batch 1/8/11", "plan whose sidecar names another GPU is refused")
    if missing is not None:
        return [Check(name, "skipped", missing) for name in names]
    from qualitynet.runtime.trt_runner import TrtRunner

    folder = work / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "timing.cache"
    cache.unlink(missing_ok=True)
    checks = []
    plan: Path | None = None
    for name in names[:3]:
        if name == names[2]:
            cache.write_bytes(b"not a timing cache " * 64)
        try:
            result = export_all(checkpoint, folder, fp16=True, timing_cache=cache)
        except Exception as exc:  # noqa: BLE001 - every failure is a finding to record
            checks.append(Check(name, "failed", _error(exc)))
            continue
        plan = result.file("plan")
        checks.append(Check(name, "passed", figures={
            "tensorrt_seconds": round(result.seconds["tensorrt"], 2) if "tensorrt" in result.seconds else None,
            "cache_bytes": cache.stat().st_size if cache.is_file() else 0,
            "verification": result.verifications["plan"].to_dict() if "plan" in result.verifications else None}))
    if plan is None:
        return checks + [Check(name, "skipped", "no plan was built (see above)") for name in names[3:]]
    inputs, _ = load_photos(None, load_checkpoint(checkpoint).preprocess)
    try:
        figures = {}
        with TrtRunner(plan) as trt, OrtRunner(folder / "model.onnx", provider="cpu") as ort:
            for size in TRT_BATCHES:
                batch = inputs[np.arange(size) % len(inputs)]
                got, want = trt.infer(batch), ort.infer(batch)
                if got.shape != (size,) or not np.isfinite(got).all():
                    raise QualityNetError(f"batch {size}: TensorRT returned shape {got.shape} or non-finite scores")
                figures[f"batch_{size}_max_abs_vs_onnxruntime_fp32"] = float(np.max(np.abs(got - want)))
        checks.append(Check(names[3], "passed", "unit-scale scores", figures))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check(names[3], "failed", _error(exc)))
    checks.append(_refusal(plan, folder, TrtRunner))
    return checks


def _decode_checks(checkpoint: Path, work: Path, device: str, quick: bool) -> list[Check]:
    """nvImageCodec (nvJPEG on the GPU; its CPU codec in the CPU rehearsal) against Pillow: decode rate,
    score agreement and end to end, on 1024x768 and camera-size (4000x3000, grain) JPEGs."""
    from qualitynet.agreement import agreement
    from qualitynet.export import export_onnx
    from qualitynet.runtime.decode_pool import decode_path
    from qualitynet.runtime.nvimgcodec_decode import NvImageCodecPool, nvimgcodec_missing
    from qualitynet.runtime.scorer import Scorer
    from qualitynet.trainer.demo_dataset import make_photo_folder

    if (missing := nvimgcodec_missing()) is not None:
        return [Check("nvImageCodec decode", "skipped", missing)]
    model = checkpoint.parent / "model.onnx"
    if not model.exists():
        export_onnx(checkpoint, model)
    decoder, kind = ("nvimgcodec", "gpu") if device == "cuda" else ("nvimgcodec-cpu", "cpu")
    checks = []
    for label, size, count, grain in (("1024x768", (1024, 768), 16 if quick else 128, 0.0),
                                      ("4000x3000 grain", (4000, 3000), 4 if quick else 32, 2.0)):
        folder = work / f"decode-{size[0]}x{size[1]}"
        if len(list(folder.glob("*.jpg"))) < count:
            make_photo_folder(folder, count=count, size=size, grain=grain)
        paths = sorted(str(p) for p in folder.glob("*.jpg"))[:count]
        try:
            with Scorer(model, workers=0, decoder=decoder, batch_size=16) as scorer:
                cfg = scorer.meta.preprocess
                pool = NvImageCodecPool(cfg, kind, batch=16)
                figures: dict[str, Any] = {"images": count, "decoder": decoder}
                start = time.perf_counter()
                reference = [decode_path(p, cfg) for p in paths]
                figures["pillow_decode_img_s"] = round(count / (time.perf_counter() - start), 1)
                pool.decode_many(paths[:4])  # warm-up: the codec's first batch sets up its buffers
                start = time.perf_counter()
                candidate = [item for i in range(0, count, 16) for item in pool.decode_many(paths[i:i + 16])]
                figures[f"{kind}_decode_img_s"] = round(count / (time.perf_counter() - start), 1)
                ours = scorer.score_decoded(candidate)
                theirs = scorer.score_decoded(reference)
                agreed = agreement(np.array([r.score for r in theirs], float), np.array([r.score for r in ours], float))
                figures.update(srocc=round(agreed.srocc, 5), max_abs_mos=round(agreed.max_abs, 5),
                               mean_abs_mos=round(agreed.mean_abs, 5))
                gate = scorer.check_decoder(paths[:16])
                start = time.perf_counter()
                list(scorer.score_paths(paths))
                figures[f"end_to_end_{decoder}_img_s"] = round(count / (time.perf_counter() - start), 1)
            with Scorer(model, batch_size=16) as scorer:
                scorer.warm_up()
                start = time.perf_counter()
                list(scorer.score_paths(paths))
                figures["end_to_end_pillow_workers_img_s"] = round(count / (time.perf_counter() - start), 1)
            checks.append(Check(f"decode {label}", "passed" if gate and gate.passed else "failed",
                                gate.describe() if gate else "", figures))
        except Exception as exc:  # noqa: BLE001 - a decode failure is a finding, not the end of the check
            checks.append(Check(f"decode {label}", "failed", _error(exc)))
    return checks


def _refusal(plan: Path, folder: Path, runner_class: Any) -> Check:
    """Copy the plan with a sidecar naming another compute capability; loading it must be refused."""
    name = "plan whose sidecar names another GPU is refused"
    meta = ArtifactMeta.read_sidecar(plan)
    major, minor = (meta.compute_capability or "0.0").split(".")
    other = folder / "other-gpu.plan"
    shutil.copyfile(plan, other)
    replace(meta, compute_capability=f"{int(major) + 1}.{minor}", gpu_name="another GPU").write_sidecar(other)
    try:
        with runner_class(other):
            return Check(name, "failed", "the plan loaded although its sidecar names another GPU")
    except QualityNetError as exc:
        return Check(name, "passed" if "refused" in str(exc) else "failed", _error(exc))


def _settings(config: str, quick: bool, device: str) -> BenchSettings:
    if quick:
        return BenchSettings(batch_sizes=(1, 4), warmup=1, iters=3, device=device, quiet=True,
                             torch_variants=tuple(TORCH_VARIANTS))
    variants = tuple(TORCH_VARIANTS) if config in COMPILE_CONFIGS else ("cudagraph",)
    return BenchSettings(batch_sizes=(1, 8, 32, 64), warmup=5, iters=200, max_seconds=2.0, device=device,
                         torch_variants=variants,
                         cpu_max_batch=PAPER_CPU_MAX_BATCH if config == "qualitynet" else None)


def _markdown(check: GpuCheck) -> str:
    lines = [f"# GPU check: {check.device}", ""]
    gpu = check.machine.get("gpu") or {}
    lines.append(f"GPU {gpu.get('name', '-')} (compute capability {gpu.get('compute_capability', '-')}, "
                 f"driver {gpu.get('driver', '-')}, CUDA runtime {gpu.get('cuda_runtime', '-')}); "
                 f"{check.machine['cpu_model']}, {check.machine['cpu_cores']} cores; "
                 + ", ".join(f"{k} {v}" for k, v in check.machine["versions"].items()))
    lines.append(f"Whole check: {check.seconds:.0f} s.")
    lines += [f"- {note}" for note in check.notes]
    for config, data in check.configs.items():
        lines += ["", f"## `{config}` config (untrained weights)", "", data["table"]]
    lines += ["", "## TensorRT", ""]
    lines += [f"- {c.name}: **{c.status}**" + (f" ({c.detail})" if c.detail else "")
              + (f" {json.dumps(c.figures)}" if c.figures else "") for c in check.tensorrt]
    lines += ["", "## GPU decoding (nvImageCodec vs Pillow)", ""]
    lines += [f"- {c.name}: **{c.status}**" + (f" ({c.detail})" if c.detail else "")
              + (f" {json.dumps(c.figures)}" if c.figures else "") for c in check.decode]
    if check.skipped:
        lines += ["", "## Not measured", ""] + [f"- {reason}" for reason in check.skipped]
    return "\n".join(lines) + "\n"


def run_gpu_check(device: str, quick: bool, out: Path, work: Path, budget: float) -> None:
    """The whole check.

    Args:
        device: ``auto`` (the GPU, or a "no CUDA device" report) or ``cpu`` (the rehearsal).
        quick: the ``tiny`` config and tiny iteration counts.
        out: where ``gpu-<device>.json`` and ``.md`` go.
        work: where checkpoints and exports are made.
        budget: seconds after which no further config is started.
    """
    started = time.perf_counter()
    if device == "auto":
        if not torch.cuda.is_available():
            print("GPU check: no CUDA device (torch.cuda.is_available() is False; torch "
                  f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); nothing measured. "
                  "Run it on a machine with an NVIDIA GPU, or --device cpu --quick for the CPU rehearsal.")
            return
        device = "cuda"
    known = {*MODEL_CONFIGS, *DEEPFEAT_CONFIGS, *MLMS_CONFIGS}
    configs = ("tiny",) if quick else tuple(c for c in GPU_CONFIGS if c in known)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    check = GpuCheck(device=name, machine=machine_info(torch.get_num_threads()),
                     settings={"quick": quick, "device": device, "configs": list(configs)})
    check.skipped += [f"config {c!r}: not defined in this checkout" for c in GPU_CONFIGS
                      if not quick and c not in known]
    stem = out / f"gpu-{_slug(name)}{'-quick' if quick else ''}"
    if device == "cuda":
        check.notes.append("peak device MiB: device-wide memory in use (every allocator and the CUDA context), "
                           "sampled after each timed batch; points run one after another in one process.")
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        check.notes.append(f"onnxruntime {onnxruntime.__version__} here is the CPU build (providers: "
                           f"{', '.join(providers)}): its rows run on the CPU, not the GPU; the paper config's "
                           f"are limited to batch <= {PAPER_CPU_MAX_BATCH}.")
    for config in configs:
        if time.perf_counter() - started > budget:
            check.skipped.append(f"config {config!r}: the {budget:.0f} s budget was spent before it")
            continue
        print(f"[gpu_check] {config}: checkpoint, export, benchmark ({time.perf_counter() - started:.0f} s so far)",
              flush=True)
        try:
            checkpoint = _checkpoint(work, config)
        except Exception as exc:  # noqa: BLE001 - e.g. a config whose weights do not import
            check.skipped.append(f"config {config!r}: its checkpoint could not be made ({_error(exc)})")
            continue
        if config == configs[0]:
            check.tensorrt = _tensorrt_checks(checkpoint, work)
            check.decode = _decode_checks(checkpoint, work, device, quick)
        try:  # export here so that a failed FP16 check is a finding, not the end of the config's figures
            export_all(checkpoint, checkpoint.parent, fp16=True, require_tensorrt=False)
        except VerificationError as exc:  # the files are kept and fresh: run_bench reuses them
            check.notes.append(f"config {config!r}: {_error(exc)}")
        try:
            report: BenchReport = run_bench(checkpoint, _settings(config, quick, device))
        except Exception as exc:  # noqa: BLE001 - one config failing must not lose the others' figures
            check.skipped.append(f"config {config!r}: the benchmark failed ({_error(exc)})")
        else:
            check.configs[config] = {"report": report.to_dict(), "table": format_table(report, markdown=True)}
        _write(check, stem, started)  # after every config, so a run cut short keeps what it measured
    print(_markdown(check))
    print(f"[gpu_check] wrote {stem}.json and {stem}.md in {check.seconds:.0f} s")


def _write(check: GpuCheck, stem: Path, started: float) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` with everything measured so far."""
    check.seconds = time.perf_counter() - started
    stem.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(check)
    for entry in data["configs"].values():
        entry.pop("table")
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(_markdown(check), encoding="utf-8")

