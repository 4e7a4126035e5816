"""Where a whole model's time goes on the GPU: dense BERT-base against its FFF version (depth 11,
leaf width 2, random weights), bf16, batch 64 x 128. Needs a CUDA GPU and the built CUDA kernel.

    python examples/profile_gpu_model.py

Prints, for each model: the eager wall time per forward, the host's time for one forward call,
the GPU kernel time per forward (torch.profiler, kernels only) with the busiest kernels, and the
time of the forward replayed as a CUDA graph. When the kernel time is well under the wall time,
the host sets the pace. (docs/results/gpu-model-profile-h100.txt is its output on an H100. Use
transformers >= 5.23: older versions give BERT an attention mask under graph capture that forces
fp32 math attention.)
"""
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from fffconvert.bench import BenchConfig, bert_models
from fffconvert.optimize import capture

FORWARDS = 5


def wall_ms(fn, n=20):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def main():
    dense, fff, ids = bert_models(BenchConfig(device="cuda", dtype="bfloat16", batch=64, seq_len=128))
    calls = {"dense": lambda: dense(input_ids=ids), "fff": lambda: fff(input_ids=ids)}
    with torch.inference_mode():
        for fn in calls.values():
            for _ in range(3):
                fn()
        for name, fn in calls.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            host = (time.perf_counter() - t) * 1e3
            torch.cuda.synchronize()
            print(f"{name}: eager {wall_ms(fn):.3f} ms per forward, host time of one call {host:.3f} ms")
        for name, fn in calls.items():
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(FORWARDS):
                    fn()
                torch.cuda.synchronize()
            events = prof.key_averages()
            gpu_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
            print(f"== {name}: GPU kernel time per forward {gpu_us / FORWARDS / 1e3:.3f} ms")
            print(events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
        for name, fn in calls.items():
            print(f"{name}: CUDA graph replay {wall_ms(capture(fn, warmup=3)[0].replay, 50):.3f} ms")


if __name__ == "__main__":
    main()
