"""One measured process: a model, one implementation, one or more ops, driven over a pipe by `run.py`.

Forked from the driver after torch and transformers are imported (so a worker starts in a second,
not fifteen); the implementation under test (bridge_core, transformer_lens, nnsight) is imported
only here, in its own process. Peak memory is the RSS high-water mark from `getrusage` minus its
value once the model is loaded.
"""

from __future__ import annotations

import gc
import resource
import time
import traceback
from typing import Any

import torch
import workloads


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def tensor_bytes(value: Any) -> int:
    """Bytes of the distinct tensor storages reachable in a result (caches share aliased tensors)."""
    seen: dict[int, int] = {}

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            storage = v.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list | tuple):
            for item in v:
                walk(item)
        elif hasattr(v, "cache_dict"):
            walk(v.cache_dict)
        elif hasattr(v, "logits"):
            walk(v.logits)

    walk(value)
    return sum(seen.values())


def serve(conn, job: dict) -> None:
    """Build, then answer ("run", op, n) with n timings in seconds until ("finish",)."""
    try:
        torch.set_num_threads(job["threads"])
        with torch.no_grad():
            _serve(conn, job)
    except BaseException as exc:  # report, never hang the driver
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2500:]}"))
    finally:
        conn.close()


def _serve(conn, job: dict) -> None:
    shape = workloads.ModelShape(**job["shape"])
    model = workloads.build_model(shape, job["attn"])
    gc.collect()
    baseline = max_rss_mb()
    make = workloads.IMPLEMENTATIONS[job["impl"]]
    ops = {}
    cold = None
    for op_name, options in job["ops"].items():
        start = time.perf_counter()
        ops[op_name] = make(options["workload"], model, shape, **options.get("kwargs", {}))
        if options["workload"] == "build":  # the first build of a process, with its one-time loading
            prepare, call = ops[op_name]
            if prepare:
                prepare()
            start = time.perf_counter()
            call()
            cold = time.perf_counter() - start
    info: dict[str, Any] = {"setup_s": time.perf_counter() - start, "cold_build_s": cold}
    conn.send(("ready", info))
    cache_bytes = 0
    while True:
        message = conn.recv()
        if message[0] == "run":
            _, op_name, n = message
            prepare, call = ops[op_name]
            times, cpu = [], []
            for _ in range(n):
                if prepare:
                    prepare()
                start = time.perf_counter()
                cpu_start = time.thread_time()  # this thread's CPU: another process's load does not add to it
                result = call()
                cpu.append(time.thread_time() - cpu_start)
                times.append(time.perf_counter() - start)
                cache_bytes = tensor_bytes(result) if job.get("measure_result") else 0
                del result
            conn.send(("times", {"wall": times, "cpu": cpu}))
        elif message[0] == "profile":
            conn.send(("profile", _profile(ops[message[1]], message[2])))
        elif message[0] == "finish":
            peak_extra = max_rss_mb() - baseline
            conn.send(
                (
                    "done",
                    {"peak_extra_mb": peak_extra, "result_mb": cache_bytes / 2**20, **_checks(job, model, shape, ops)},
                )
            )
            return


def _profile(op, n: int, top: int = 22) -> str:
    """cProfile of n calls: the functions with the most time of their own, then by cumulative time."""
    import cProfile
    import io
    import pstats

    prepare, call = op
    profiler = cProfile.Profile()
    for _ in range(n):
        if prepare:
            prepare()
        profiler.enable()
        result = call()
        profiler.disable()
        del result
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def _checks(job: dict, model, shape, ops: dict) -> dict:
    """bridge-core's forward without hooks against the HF model's (after timing, so not in the peak)."""
    forward = [name for name, options in job["ops"].items() if options["workload"] == "forward"]
    if job["impl"] != "bridge_core" or not forward:
        return {}
    ours = ops[forward[0]][1]()
    reference = model(input_ids=workloads.tokens(shape)).logits
    return {"bit_identical": bool(torch.equal(ours, reference)), "max_abs_diff": float((ours - reference).abs().max())}
