"""Test-only: let accelerate's FSDP path run on CPU processes (gloo), for the 2-process FSDP test.

accelerate enables FSDP only for accelerator process groups (MULTI_GPU, MULTI_XPU, ...) and falls
back to plain DDP for MULTI_CPU. torch's FSDP 2 itself shards on CPU over gloo, so this file, put on
PYTHONPATH of the launched processes only, reports the CPU group as an accelerator group whose
device is the CPU. Nothing else is changed: the wrapping, sharding, collectives and state-dict
gathering are accelerate's and torch's.
"""

import os

if os.environ.get("EDGEQA_TEST_FSDP_ON_CPU") == "1":
    import torch
    from accelerate import state
    from accelerate.utils import DistributedType

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        if not torch.distributed.is_initialized():  # accelerate leaves this to its MULTI_CPU branch
            torch.distributed.init_process_group("gloo")
        return "gloo", DistributedType.MULTI_GPU

    def set_device(self):
        if self.device is None:
            self.device = torch.device("cpu")

    state.PartialState._prepare_backend = _prepare_backend
    state.PartialState.set_device = set_device
