"""Peak dense FLOP/s and memory of common data-centre GPUs: the facts `gat-study plan --accelerator` costs with.

Every peak is the vendor datasheet's *dense* figure (datasheets print tensor-core peaks "with sparsity", which are
twice the dense ones; halved here), in true FLOPs: a fused multiply-add counts 2 FLOPs.  The project's MAC counts
(`gat_core.flops`, 1 multiply-accumulate = 1 "FLOP" in DiT's convention) are doubled before they are divided by
these peaks.  Three precisions:

- bf16: tensor-core BF16 with FP32 accumulate (what `train.precision: bf16`, and `auto` on CUDA, runs at).
- fp32: the non-tensor FP32 peak.  torch leaves `torch.backends.cuda.matmul.allow_tf32` off, and this project never
  turns it on, so `train.precision: fp32` matmuls run in full FP32 on the CUDA cores.
- tf32: the TF32 tensor-core peak: what fp32 training runs at if you enable TF32 yourself
  (`torch.set_float32_matmul_precision("high")`); absent on GPUs without TF32 (V100, T4).

Memory is the board's memory in GB (10^9 bytes, as datasheets count it).  Torch-free on purpose: a fact table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DTYPES = ("bf16", "fp32", "tf32")


@dataclass(frozen=True)
class Accelerator:
    name: str
    bf16_tflops: float | None  # dense tensor-core BF16, 10^12 FLOP/s (None: no BF16 tensor cores)
    tf32_tflops: float | None  # dense tensor-core TF32 (None: no TF32)
    fp32_tflops: float         # non-tensor FP32
    memory_gb: float           # board memory, 10^9 bytes
    source: str
    note: str = ""

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s (true FLOPs, 2 per multiply-add) at `dtype`; ValueError naming what to use instead."""
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        tflops = {"bf16": self.bf16_tflops, "tf32": self.tf32_tflops, "fp32": self.fp32_tflops}[dtype]
        if tflops is None:
            have = [d for d in DTYPES if d != dtype and self.peak_tflops_or_none(d) is not None]
            raise ValueError(f"--accelerator {self.name} has no {dtype} tensor cores ({self.note or 'see its datasheet'}); "
                             f"cost it with --dtype {' or --dtype '.join(have)} (and train.precision: fp32)")
        return tflops * 1e12

    def peak_tflops_or_none(self, dtype: str) -> float | None:
        return {"bf16": self.bf16_tflops, "tf32": self.tf32_tflops, "fp32": self.fp32_tflops}[dtype]

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 | 624 sparse, TF32 156 | 312 sparse, FP32 19.5 TFLOPS"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023), sparse figures halved"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (2024): BF16 1,979 sparse, TF32 989 sparse, FP32 67 TFLOPS"

ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    Accelerator("A100-40GB", 312.0, 156.0, 19.5, 40, _A100 + "; 40 GB HBM2 (SXM4; the PCIe card has the same peaks)"),
    Accelerator("A100-80GB", 312.0, 156.0, 19.5, 80, _A100 + "; 80 GB HBM2e (SXM4; the PCIe card has the same peaks)"),
    Accelerator("H100-SXM", 989.5, 494.5, 67.0, 80, _H100 + ": SXM5 BF16 1,979 sparse, TF32 989 sparse, FP32 67 TFLOPS; "
                "80 GB HBM3"),
    Accelerator("H100-PCIe", 756.5, 378.0, 51.0, 80, _H100 + ": PCIe BF16 1,513 sparse, TF32 756 sparse, FP32 51 TFLOPS; "
                "80 GB HBM2e"),
    Accelerator("H100-NVL", 835.5, 417.5, 60.0, 94, _H100 + ": NVL BF16 1,671 sparse, TF32 835 sparse, FP32 60 TFLOPS; "
                "94 GB HBM3"),
    Accelerator("H200", 989.5, 494.5, 67.0, 141, _H200 + "; 141 GB HBM3e (SXM; the H200 NVL: 1,671 / 835 sparse, 60)"),
    Accelerator("L40S", 362.05, 183.0, 91.6, 48, "NVIDIA L40S datasheet (2023): BF16 362.05 | 733 sparse, "
                "TF32 183 | 366 sparse, FP32 91.6 TFLOPS; 48 GB GDDR6"),
    Accelerator("L4", 121.0, 60.0, 30.3, 24, "NVIDIA L4 datasheet (2023): BF16 242 sparse, TF32 120 sparse, FP32 30.3 "
                "TFLOPS; 24 GB GDDR6"),
    Accelerator("A10", 125.0, 62.5, 31.2, 24, "NVIDIA A10 datasheet (2021): BF16 125 | 250 sparse, TF32 62.5 | 125 sparse, "
                "FP32 31.2 TFLOPS; 24 GB GDDR6"),
    Accelerator("A10G", 70.0, 35.0, 35.0, 24, "no NVIDIA datasheet (an AWS-only part, EC2 G5): 80 SMs at 1.71 GHz with "
                "GA102's GeForce-class tensor rate, as third-party spec comparisons list it (e.g. Baseten, 'NVIDIA A10 vs "
                "A10G'): BF16 70, TF32 35, FP32 35 TFLOPS dense; 24 GB GDDR6", note="unofficial figures"),
    Accelerator("V100", None, None, 15.7, 32, "NVIDIA V100 Tensor Core GPU datasheet (2020): SXM2 FP32 15.7 TFLOPS, "
                "FP16 tensor 125 TFLOPS; 32 GB HBM2 (a 16 GB card exists)",
                note="Volta: FP16 tensor cores only, no BF16 or TF32"),
    Accelerator("T4", None, None, 8.1, 16, "NVIDIA T4 datasheet (2019): FP32 8.1 TFLOPS, mixed FP16/FP32 tensor 65 TFLOPS; "
                "16 GB GDDR6", note="Turing: FP16 tensor cores only, no BF16 or TF32"),
)}

ALIASES = {"A100": "A100-80GB", "A100-SXM": "A100-80GB", "H100": "H100-SXM", "H200-SXM": "H200", "V100-SXM2": "V100"}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def lookup(name: str) -> Accelerator:
    """The table's entry for `name` (case, spaces, '-' and '_' ignored; A100 = A100-80GB, H100 = H100-SXM); a
    ValueError naming every choice otherwise."""
    names = {_key(n): n for n in ACCELERATORS} | {_key(a): n for a, n in ALIASES.items()}
    found = names.get(_key(name))
    if found is None:
        raise ValueError(f"--accelerator {name!r} is not in the table; choose one of {', '.join(ACCELERATORS)} "
                         f"(aliases: {', '.join(f'{a} = {n}' for a, n in ALIASES.items())}), or cost another GPU by its "
                         "peak with --peak-tflops")
    return ACCELERATORS[found]


# MFU defaults: what bench/mfu.py measured (bench/results/mfu.json, 2026-12-01: a full GAT iteration, width 256,
# depth 8, 64 tokens, batch 64, DiffAugment on), against the matmul peak of the same dtype measured in the same run.
# Measured on a 2-core CPU, not on a GPU: pass --mfu with a number measured on your GPU.
MEASURED_MFU = {"fp32": 0.74, "bf16": 0.32}
MFU_SOURCE = ("what bench/mfu.py measured (bench/results/mfu.json, 2026-12-01, on a 2-core CPU, not a GPU): fp32 0.74, "
              "bf16 0.32 of the same dtype's measured matmul peak; tf32 takes the bf16 value (not measured)")


def default_mfu(dtype: str) -> float:
    return MEASURED_MFU.get(dtype, MEASURED_MFU["bf16"])
