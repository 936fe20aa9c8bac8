"""
`accelerate launch --config_file tests/fsdp_cpu.yaml tests/fsdp_on_cpu.py <train_accelerate.py flags>`: the training
command line under accelerate's FSDP2 plugin on CPU processes (gloo).

accelerate applies its FSDP plugin only to a process group of a GPU-class device type (its `MULTI_GPU`, `MULTI_XPU`,
...); a CPU group (`MULTI_CPU`) silently runs without it. The one override: the CPU process group is declared
`MULTI_GPU` before the `Accelerator` is built, so that accelerate takes its FSDP path (plugin, `fully_shard`, sharded
state dicts) while every tensor stays on the CPU and collectives go through gloo.
"""

import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import DistributedType


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_accelerate  # noqa: E402


if __name__ == "__main__":
    state = PartialState(cpu=True)
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise SystemExit(f"Launch with 2 CPU processes (tests/fsdp_cpu.yaml), not as {state.distributed_type}.")
    state.distributed_type = DistributedType.MULTI_GPU
    train_accelerate.main(sys.argv[1:])
