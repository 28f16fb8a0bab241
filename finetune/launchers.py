"""`accelerate` launch configs shipped with edgeqa: DDP, FSDP (T5Block units) and DeepSpeed ZeRO-2/3.

    accelerate launch --config_file "$(python -m edgeqa.finetune.launchers fsdp)" --num_processes 8 \\
        -m edgeqa.cli finetune --model google/flan-t5-xl --data yahoo_answers_qa -o runs/xl
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgeqa.errors import ConfigError

FOLDER = Path(__file__).parent / "accelerate"
LAUNCHERS = {
    "ddp": "data parallel, one process per GPU (small, base, large)",
    "fsdp": "FSDP 2, each T5Block sharded on its own (large, xl)",
    "zero2": "DeepSpeed ZeRO-2: optimizer states and gradients sharded (xl)",
    "zero3": "DeepSpeed ZeRO-3: parameters sharded too (xl, xxl)",
}


def accelerate_config(name: str) -> Path:
    """The YAML file for `accelerate launch --config_file`."""
    if name not in LAUNCHERS:
        raise ConfigError(f"no launch config {name!r}; choose one of {', '.join(LAUNCHERS)}")
    return FOLDER / f"{name}.yaml"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in LAUNCHERS:
        listing = "\n".join(f"  {name:6} {what}" for name, what in LAUNCHERS.items())
        sys.exit(f"usage: python -m edgeqa.finetune.launchers NAME  (prints the config's path)\n{listing}")
    print(accelerate_config(args[0]))


if __name__ == "__main__":
    main()
