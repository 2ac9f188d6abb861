"""Training diagnostics as small ``TrainerCallback``s: per-layer gradient norms, per-layer distance from the
starting weights, and a live degenerate-run alarm.

* :class:`LayerGradNormCallback` — L2 norm of the gradient of each layer group at the update, **before
  clipping** (Mosbach et al. 2021, Fig. 4: failed runs show vanishing gradients in the lower layers).
  Keys ``grad_norm/embeddings``, ``grad_norm/layer.0`` … ``grad_norm/layer.{L-1}``, ``grad_norm/pooler``,
  ``grad_norm/head``.
* :class:`ParameterDistanceCallback` — ``‖θ_g − θ_g,0‖₂`` over all parameters of group ``g``, θ₀ being the
  weights fine-tuning started from (Zhang et al. 2021, Fig. 7). Keys ``l2_from_init/<group>``.
* :class:`DegenerateRunCallback` — raises an alarm when the training loss or the weights become non-finite
  (at the update it happens; on CUDA read one update later so the GPU never stalls) or when, after a fraction
  of training, the training loss is still not below the loss of the best constant predictor; optionally stops
  the run (Dodge et al. 2020: bad seeds can be stopped early). Keys ``degenerate_alarm`` and ``degenerate_alarm/*``.
* :func:`callbacks_from_args` builds them from :class:`~hf_stable_ft.StableTrainingArguments`;
  :func:`summarize_diagnostics` turns ``trainer.state.log_history`` back into series.

One module a job: ``groups`` (layer groups), ``logs`` (writing into the Trainer's log record),
``grad_norms``, ``distance`` and ``degenerate`` (one callback each), ``labels`` (training labels of a dataset),
``from_args`` (the wiring) and ``summary`` (reading a finished run back).

Groups come from :func:`hf_stable_ft.architectures.parameter_depths` (embeddings, one group per block,
pooler, head); for a model it has no layout for (or ALBERT, whose blocks share weights) there is one group,
``all``, and a warning says so. Only trainable parameters are counted.

How the values reach the logs
-----------------------------
Each callback computes its values at its step and writes them into **the Trainer's own log record of that
step**: it sets ``control.should_log = True`` at that step (so the Trainer logs then — diagnostics steps are
logging steps), and in ``on_log`` adds its keys to the ``logs`` dict and to the record the Trainer has just
appended to ``state.log_history``. One record per step therefore carries ``loss``, ``grad_norm``,
``learning_rate`` and the diagnostics, and ``log_history`` (saved in ``trainer_state.json``, restored on
resume) holds them all.

``on_log`` runs the callbacks in list order, and the Trainer puts its reporting integrations (``report_to``:
TensorBoard, W&B, MLflow, …) *before* every callback passed in ``callbacks=[...]``. A value added to ``logs``
by a callback reaches only the callbacks after it. :func:`place_before_reporters` moves a callback right
behind ``DefaultFlowCallback``, ahead of the integrations, so every backend receives the values;
``StableTrainer`` does this for its :class:`~hf_stable_ft.StableFineTuningCallback`. With a stock
``Trainer`` call ``place_before_reporters(trainer, callback)`` once after building it. (We chose this over
TRL's ``trainer.log(extra)`` because the pre-clipping norms need the Trainer's own ``grad_norm`` of the same
step, which exists only in that step's record, and because one record per step keeps every backend's
history aligned.)

Pre-clipping gradient norms
---------------------------
The Trainer clips before the first event that sees the accumulated gradient (``on_pre_optimizer_step``), and
``clip_grad_norm_`` scales every gradient by the same ``c = min(1, max_grad_norm / (‖g‖ + 1e-6))``, where
``‖g‖`` is the pre-clipping total norm that the Trainer logs as ``grad_norm``. The callback takes the
per-group norms of the clipped gradients at ``on_pre_optimizer_step`` (on-device, no synchronisation) and
divides them by ``c`` recomputed from that step's logged ``grad_norm``: the result equals the norm of the
unclipped gradient to float rounding, costs one pass over the gradients on diagnostics steps only, and
under DistributedDataParallel reads the all-reduced gradient (gradient hooks would see each rank's local
one). With gradient accumulation it is the accumulated gradient exactly as the optimizer receives it.

Distributed training
--------------------
Under DDP every rank holds the same all-reduced gradients and the same parameters, so every rank computes the
same values; the Trainer calls ``on_log`` on every rank and its integrations report from the main process
only. The degenerate-run decision uses the logged loss, which the Trainer averages over ranks before logging,
and parameters that are identical on every rank; the finiteness flag is moreover min-reduced across ranks and
read at the same update everywhere, so an abort is decided identically on every rank. Sharded training (FSDP, DeepSpeed ZeRO-2/3) keeps only
a shard of each gradient/parameter per rank: the group norms would be per-shard values and are not supported.
"""

from .degenerate import ALARM_KEY, DegenerateAlarm, DegenerateRunCallback, loss_alarm_step
from .distance import DISTANCE_PREFIX, ParameterDistanceCallback
from .from_args import callbacks_from_args
from .grad_norms import GRAD_NORM_PREFIX, LayerGradNormCallback
from .groups import group_order, layer_groups
from .labels import dataset_labels
from .logs import place_before_reporters
from .summary import summarize_diagnostics

__all__ = [
    "GRAD_NORM_PREFIX",
    "DISTANCE_PREFIX",
    "ALARM_KEY",
    "DegenerateAlarm",
    "DegenerateRunCallback",
    "LayerGradNormCallback",
    "ParameterDistanceCallback",
    "callbacks_from_args",
    "dataset_labels",
    "group_order",
    "layer_groups",
    "loss_alarm_step",
    "place_before_reporters",
    "summarize_diagnostics",
]
