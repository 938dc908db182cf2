"""Issue #17 probe: is a float8 frozen base worth building? Times, on this GPU, each GEMM of the 1b
shape's training step (3000 tokens = batch 8 x 30 s) in bf16 against torch._scaled_mm in float8
e4m3 with row-wise scales (activations per token, weights per output row), the quantization of the
activation included, and reports the float8 result's error against float32.
    python scripts/probe_fp8.py   (CUDA, sm_89 or newer)"""
import json
import time

import torch

E4M3 = torch.float8_e4m3fn
MAX = torch.finfo(E4M3).max


def rowwise(t: torch.Tensor):
    scale = t.abs().amax(-1, keepdim=True).float().clamp(min=1e-12) / MAX
    return (t.float() / scale).to(E4M3), scale


def timed(fn, n=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def main() -> None:
    torch.manual_seed(0)
    M = 3000
    shapes = {"in_proj": (2048, 6144), "out_proj": (2048, 2048), "linear_in": (2048, 11264), "linear_out": (5632, 2048)}
    total = {"bf16": 0.0, "fp8": 0.0, "fp8_with_quant": 0.0}
    for name, (K, N) in shapes.items():
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(N, K, device="cuda") * K ** -0.5).to(torch.bfloat16)
        w8, sw = rowwise(w)
        x8, sx = rowwise(x)
        bf16 = timed(lambda: x @ w.t())
        fp8 = timed(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw.t(), out_dtype=torch.bfloat16))
        quant = torch.compile(rowwise)

        def with_quant():
            a, s = quant(x)
            return torch._scaled_mm(a, w8.t(), scale_a=s, scale_b=sw.t(), out_dtype=torch.bfloat16)

        full = timed(with_quant)
        ref = x.float() @ w.float().t()
        err8 = ((with_quant().float() - ref).norm() / ref.norm()).item()
        err16 = (((x @ w.t()).float() - ref).norm() / ref.norm()).item()
        # the backward's input gradient: g @ W, W's row scales folded into g, W transposed per step
        g = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)

        def grad_input():
            g8, sg = quant(g * sw.t())
            return torch._scaled_mm(g8, w8.t().contiguous().t(), scale_a=sg,
                                    scale_b=torch.ones(1, K, device="cuda"), out_dtype=torch.bfloat16)

        back8, back16 = timed(grad_input), timed(lambda: g @ w)
        gref = g.float() @ w.float()
        gerr8 = ((grad_input().float() - gref).norm() / gref.norm()).item()
        print(json.dumps({"gemm": name, "M": M, "K": K, "N": N, "bf16_ms": round(bf16 * 1e3, 4),
                          "fp8_ms": round(fp8 * 1e3, 4), "fp8_with_quant_ms": round(full * 1e3, 4),
                          "bf16_tflops": round(2 * M * K * N / bf16 / 1e12, 1),
                          "fp8_tflops": round(2 * M * K * N / fp8 / 1e12, 1),
                          "grad_input_bf16_ms": round(back16 * 1e3, 4), "grad_input_fp8_ms": round(back8 * 1e3, 4),
                          "rel_err_fp8": round(err8, 5), "rel_err_bf16": round(err16, 5),
                          "grad_rel_err_fp8": round(gerr8, 5)}), flush=True)
        total["bf16"] += bf16 + back16
        total["fp8"] += fp8 + back8
        total["fp8_with_quant"] += full + back8
    print(json.dumps({"what": "per_layer_forward_plus_input_grad_ms",
                      **{k: round(v * 1e3, 3) for k, v in total.items()},
                      "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
