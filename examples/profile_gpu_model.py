"""Where the whole-model time goes on the GPU: dense vs FFF BERT-base, bf16, 64x128."""
import time, torch, transformers
from torch.profiler import profile, ProfilerActivity
from fffconvert.bench import BenchConfig, _routed_layer
from fffconvert.surgery import empty_fff_model, fff_layers
cfg = BenchConfig(device="cuda", dtype="bfloat16", batch=64, seq_len=128)
config = transformers.BertConfig()
torch.manual_seed(0)
dense = transformers.BertModel(config).cuda().bfloat16().eval()
fff = transformers.BertModel(config); empty_fff_model(fff, 11, 2)
for l in fff_layers(fff): l.load_state_dict(_routed_layer(BenchConfig(), torch.float32).state_dict())
fff = fff.cuda().bfloat16().eval()
ids = torch.randint(1000, 30000, (64, 128), device="cuda")
models = {"dense": dense, "fff": fff}
def wall(m, n=20):
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): m(input_ids=ids)
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3
with torch.inference_mode():
    for _ in range(3):
        for m in models.values(): m(input_ids=ids)
    for r in range(3):
        print("wall ms/forward", {k: round(wall(m), 3) for k, m in models.items()})
    # host time to issue one forward (no sync): launch-bound if close to wall
    for k, m in models.items():
        torch.cuda.synchronize(); t = time.perf_counter(); m(input_ids=ids); host = (time.perf_counter() - t) * 1e3
        torch.cuda.synchronize(); print(k, "host issue ms", round(host, 3))
    for k, m in models.items():
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(5): m(input_ids=ids)
            torch.cuda.synchronize()
        ev = prof.key_averages()
        gpu = sum(e.self_device_time_total for e in ev) / 5 / 1e3
        print(f"== {k}: GPU kernel time per forward {gpu:.3f} ms")
        print(ev.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
    # CUDA graphs: GPU-only time of each model
    for k, m in models.items():
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2): m(input_ids=ids)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): m(input_ids=ids)
        for _ in range(3): g.replay()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(50): g.replay()
        torch.cuda.synchronize(); print(k, "graph replay ms", round((time.perf_counter() - t) / 50 * 1e3, 3))
