"""Dynamic int8 on the CPU, four ways, for two 768 x 768 Linear layers (BERT-base attention
shapes): float32, torch's quantize_dynamic (fbgemm), torchao's Int8DynamicActivationInt8WeightConfig
and Int8WeightOnlyConfig, in eager mode. Mean ms per call. (Which backend quantize.py takes on the CPU.)

    python examples/bench_int8_backends.py
"""
import torch, time, copy, warnings
warnings.filterwarnings("ignore")
torch.set_num_threads(2)
from torchao.quantization import quantize_, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
def t(fn, n=20):
    for _ in range(3): fn()
    s = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - s) / n * 1e3
lin = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.Linear(768, 768)).eval()
for N in (16, 128, 1024):
    x = torch.randn(N, 768)
    res = {}
    with torch.inference_mode():
        res["fp32"] = t(lambda: lin(x))
        q1 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(lin), {torch.nn.Linear}, dtype=torch.qint8)
        res["torch.ao dynamic"] = t(lambda: q1(x))
        q2 = copy.deepcopy(lin); quantize_(q2, Int8DynamicActivationInt8WeightConfig())
        res["torchao dyn int8"] = t(lambda: q2(x))
        q3 = copy.deepcopy(lin); quantize_(q3, Int8WeightOnlyConfig())
        res["torchao int8 weight-only"] = t(lambda: q3(x))
    print(N, {k: round(v, 3) for k, v in res.items()})
