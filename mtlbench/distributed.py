"""Data-parallel training over several processes (``torchrun``): the collectives the core uses.

mtlbench does not wrap the model in :class:`torch.nn.parallel.DistributedDataParallel`. DDP's
reducer averages gradients from autograd hooks during ``backward()`` and supports neither
``torch.autograd.grad`` (the per-task gradients of PCGrad, CAGrad, MGDA …) nor double backward
(``create_graph=True``, RLAR and Rep-MTL): gradients come out wrong or the call raises
(pytorch/pytorch#47562, #63812). Instead every process runs the method on its shard of the global
batch exactly as a single process would, and the core makes the result equal to the global-batch
step at three points (see ``docs/distributed.md``):

* :func:`global_loss_values` — every rank's task losses carry the *global* batch value (the mean
  over ranks) and the rank's own gradient, so a method whose update is Σ_t f_t(L) ∇L_t for any
  function f of the loss values (FAMO, DWA, GLS, DB-MTL, UW …) sees the same L on every rank;
* :func:`all_reduce_mean_` on the T×P per-task gradient matrix, inside
  :func:`mtlbench.api.gradients.task_gradient_matrix`, before any combination is solved;
* :func:`average_gradients_` on every trained parameter's ``.grad`` after the method's backward.

Outside ``torchrun`` (no process group) every function here is the identity, at no cost.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlbench.errors import ConfigError

T = TypeVar("T")

#: Gradients are averaged in buckets of at most this many bytes (DDP's default bucket is 25 MiB).
BUCKET_BYTES = 25 * 2**20


def launched() -> bool:
    """This process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """A process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0, the only process that writes files; always true without a process group."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group (once) and return this process's device.

    CUDA → NCCL on ``cuda:LOCAL_RANK``; CPU → gloo. Without ``torchrun`` the device is returned
    unchanged. An explicit ``cuda:N`` is an error under ``torchrun``: each process owns one GPU.
    """
    if not launched():
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"train.device is {device} but under torchrun each process uses cuda:LOCAL_RANK; "
                "set train.device=cuda (or auto)"
            )
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank()} has no GPU: this machine has {torch.cuda.device_count()}; "
                "use at most that many processes per node"
            )
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return device


def shutdown() -> None:
    """Leave the process group (the end of a ``torchrun`` command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_divisible(key: str, value: int) -> None:
    """``value`` (a global batch size) must split into equal shards, or shard means differ."""
    if launched():
        world = int(os.environ["WORLD_SIZE"])
        if value % world:
            raise ConfigError(
                f"{key}={value} is the global batch and must be divisible by the {world} processes "
                f"(each takes an equal share); use a multiple of {world}"
            )


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a data cache), the other ranks after it."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank (a small picklable object: flags, a result)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over ranks in place (summed in its dtype, then divided); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def batch_normaliser(local: Tensor) -> Tensor:
    """A batch-level normaliser of this rank's shard (a count, a weight sum), as the mean over ranks.

    A loss ``Σ_{i∈shard} a_i / n_shard`` averaged over ranks is the global batch's ``Σ a_i / n`` only
    when every shard has the same ``n_shard``. Dividing the shard's sum by ``mean_r n_r = n / N``
    instead makes the ranks' mean value and mean gradient exactly the global batch's, whatever the
    shards hold (missing labels, class weights). Detached; the identity in a single process.
    """
    if not is_distributed():
        return local
    return all_reduce_mean_(local.detach().clone())


class _GlobalValue(torch.autograd.Function):
    """Forward: the given global value; backward: the local loss's gradient, unchanged."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, value: Tensor) -> Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def global_loss_values(losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each loss with the value of the global batch (the mean over ranks) and its local gradient.

    With equal shards and per-sample-mean losses, mean_r L_r is the global batch's loss, so a
    method computing Σ_t f_t(L) ∇L_t gets Σ_t f_t(L) ∇L_r,t on rank r, whose average over ranks is
    the single-process update. One all-reduce of T scalars (float64) per call; a non-finite loss on
    any rank makes it non-finite on all, so every rank skips or stops at the same step.
    """
    if not is_distributed() or not losses:
        return losses
    names = list(losses)
    first = losses[names[0]]
    values = torch.stack([losses[n].detach().to(torch.float64).reshape(()) for n in names])
    values = all_reduce_mean_(values.to(_comm_device(first)))
    return {
        n: _GlobalValue.apply(
            losses[n], values[i].to(losses[n].device, losses[n].dtype).reshape(losses[n].shape)
        )
        for i, n in enumerate(names)
    }


def _buckets(tensors: Sequence[Tensor], limit: int) -> Iterator[list[Tensor]]:
    """Consecutive runs of tensors of one dtype and device, at most ``limit`` bytes each."""
    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > limit or t.dtype != bucket[0].dtype or t.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def average_gradients_(params: Iterable[nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average ``.grad`` of ``params`` over ranks, in flat buckets.

    A parameter keeps ``grad = None`` only if it has none on every rank (an optimizer skips those,
    weight decay included); where some ranks have one, the others contribute zeros.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor(
        [p.grad is not None for p in params], dtype=torch.uint8, device=_comm_device(params[0])
    )
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    present = []
    for p, flag in zip(params, has.tolist()):
        if flag and p.grad is None:
            p.grad = torch.zeros_like(p)
        if flag:
            present.append(p)
    grads = [p.grad for p in present]
    for bucket in _buckets(grads, bucket_bytes):  # type: ignore[arg-type]
        flat = torch._utils._flatten_dense_tensors(bucket)
        all_reduce_mean_(flat)
        for g, averaged in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            g.copy_(averaged)


def _comm_device(like: Tensor) -> torch.device:
    """NCCL communicates CUDA tensors only; gloo the CPU ones."""
    return like.device if dist.get_backend() == "nccl" else torch.device("cpu")


def average_buffers_(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, so every replica
    evaluates and checkpoints the same model. Integer buffers (counters) are equal already."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            all_reduce_mean_(buffer.data)


def broadcast_module_(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def shard_batches(batches: list[list[int]]) -> list[list[int]]:
    """This rank's contiguous share of every global batch: ranks 0…W−1 together take each batch
    once, in order, so the union over ranks is exactly the single-process batch."""
    world = world_size()
    if world == 1:
        return batches
    r = rank()
    out = []
    for batch in batches:
        if len(batch) % world:
            raise ConfigError(
                f"a global batch of {len(batch)} samples cannot be split over {world} processes; "
                f"train.batch_size must be a multiple of {world}"
            )
        share = len(batch) // world
        out.append(batch[r * share : (r + 1) * share])
    return out


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Per key, the mean of the values of the ranks that have it (epoch means of the step logs)."""
    if not is_distributed():
        return values
    gathered: list[dict[str, float] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(values))
    out: dict[str, float] = {}
    for key in values.keys() | {k for g in gathered if g for k in g}:
        present = [g[key] for g in gathered if g and key in g]
        out[key] = math.fsum(present) / len(present)
    return out


def parameter_checksum(module: nn.Module) -> float:
    """Σ of every parameter and floating buffer entry, in float64: equal on replicas in step."""
    with torch.no_grad():
        tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
        return math.fsum(float(t.detach().double().sum()) for t in tensors)


class ReplicaCheck:
    """A trainer callback: after every epoch, every rank's model must be bit-identical to rank 0's.

    A method drawing rank-dependent random numbers, or updating state from rank-local values that
    are not averaged, makes replicas drift apart; this stops the run with the epoch it happened.
    """

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if not is_distributed():
            return
        mine = [parameter_checksum(m) for m in self.modules]
        gathered: list[list[float] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        if any(g != gathered[0] for g in gathered):
            raise RuntimeError(
                f"the model replicas diverged after epoch {record.get('epoch')}: parameter checksums "
                f"per rank {gathered}; a method draws rank-dependent random numbers or keeps state "
                "from rank-local values (see docs/distributed.md)"
            )
