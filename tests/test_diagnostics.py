"""Diagnostics callbacks: per-layer pre-clipping gradient norms, distance from the start, degenerate-run alarm."""

import copy
import math
import re

import numpy as np
import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback

from hf_stable_ft import StableFineTuningCallback, StableTrainer
from hf_stable_ft.diagnostics import (
    DegenerateRunCallback,
    LayerGradNormCallback,
    ParameterDistanceCallback,
    callbacks_from_args,
    dataset_labels,
    place_before_reporters,
    summarize_diagnostics,
)


def bert_group(name: str) -> str:
    """Layer group of a tiny BERT parameter, written out independently of hf_stable_ft.architectures."""
    if name.startswith("bert.embeddings."):
        return "embeddings"
    match = re.match(r"bert\.encoder\.layer\.(\d+)\.", name)
    if match:
        return f"layer.{match.group(1)}"
    return "pooler" if name.startswith("bert.pooler.") else "head"


def group_norms(named_tensors) -> dict[str, float]:
    squares: dict[str, float] = {}
    for name, tensor in named_tensors:
        group = bert_group(name)
        squares[group] = squares.get(group, 0.0) + tensor.double().pow(2).sum().item()
    return {group: math.sqrt(value) for group, value in squares.items()}


def records_with(trainer, prefix: str) -> dict[int, dict[str, float]]:
    return {
        r["step"]: {k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)}
        for r in trainer.state.log_history
        if any(k.startswith(prefix) for k in r)
    }


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


class GradProbe(TrainerCallback):
    """Per-group norms of p.grad as the optimizer will see it (used with clipping off)."""

    def __init__(self):
        self.norms = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms[state.global_step + 1] = group_norms(
            (n, p.grad) for n, p in model.named_parameters() if p.grad is not None
        )


class Reporter(TrainerCallback):
    """A reporting backend as a user (or a report_to integration) would register it."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def keys(self):
        return {k for logs in self.logs for k in logs}


class SkewedDataset(RandomClassificationDataset):
    """One label in ten is 1: the constant-prediction loss (label entropy) is far below ln 2."""

    def __init__(self, size=48):
        super().__init__(size=size)
        self.labels = (torch.arange(size) % 10 == 0).long()


def test_grad_norms_are_pre_clipping_and_match_a_manual_backward(tmp_path):
    dataset = RandomClassificationDataset(size=8)
    model = no_dropout(tiny_model("bert", tmp_path))
    reference = copy.deepcopy(model)
    args = tiny_args(tmp_path / "out", diagnostics_steps=1, max_grad_norm=1e-3, max_steps=1)
    trainer = StableTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()

    batch = {key: torch.stack([dataset[i][key] for i in range(len(dataset))]) for key in ("input_ids", "attention_mask", "labels")}
    reference.train()
    reference(**batch).loss.backward()
    manual = group_norms((n, p.grad) for n, p in reference.named_parameters())

    record = next(r for r in trainer.state.log_history if r.get("step") == 1 and "loss" in r)
    assert record["grad_norm"] > 100 * args.max_grad_norm  # clipping was active
    logged = {k[len("grad_norm/"):]: v for k, v in record.items() if k.startswith("grad_norm/")}
    assert list(logged) == ["embeddings", "layer.0", "layer.1", "layer.2", "pooler", "head"]
    for group, value in manual.items():
        assert logged[group] == pytest.approx(value, rel=1e-4), group


def test_grad_norms_with_accumulation_equal_the_unclipped_accumulated_gradient(tmp_path):
    dataset = RandomClassificationDataset(size=64)
    common = dict(diagnostics_steps=1, gradient_accumulation_steps=2, max_steps=4)
    clipped = StableTrainer(model=tiny_model("bert", tmp_path), train_dataset=dataset,
                            args=tiny_args(tmp_path / "a", max_grad_norm=1e-2, **common))
    clipped.train()
    probe = GradProbe()
    unclipped = StableTrainer(model=tiny_model("bert", tmp_path), train_dataset=dataset, callbacks=[probe],
                              args=tiny_args(tmp_path / "b", max_grad_norm=0.0, **common))
    unclipped.train()

    norms = records_with(clipped, "grad_norm/")
    assert sorted(norms) == [1, 2, 3, 4]
    # step 1 has the same gradient in both runs (later steps differ because clipping changed the weights)
    for group, value in probe.norms[1].items():
        assert norms[1][group] == pytest.approx(value, rel=1e-4), group
    # at every step the groups make up the Trainer's own pre-clipping total norm
    totals = {r["step"]: r["grad_norm"] for r in clipped.state.log_history if "grad_norm" in r}
    for step, groups in norms.items():
        assert totals[step] > 1e-2
        assert math.sqrt(sum(v * v for v in groups.values())) == pytest.approx(totals[step], rel=1e-5)


def test_distance_from_start_matches_manual_and_starts_after_reinit(tmp_path):
    model = tiny_model("bert", tmp_path)
    args = tiny_args(tmp_path / "out", diagnostics_steps=1, max_steps=3, reinit_layers=1, reinit_pooler=True)
    trainer = StableTrainer(model=model, args=args, train_dataset=RandomClassificationDataset())
    start = parameters_of(model)  # after re-init: prepare_model ran at the end of Trainer.__init__
    trainer.train()
    manual = group_norms((name, value - start[name]) for name, value in parameters_of(model).items())
    logged = records_with(trainer, "l2_from_init/")
    assert sorted(logged) == [1, 2, 3]
    for group, value in manual.items():
        assert logged[3][group] == pytest.approx(value, rel=1e-5), group
    assert all(logged[1][g] < logged[3][g] for g in manual)


def test_resume_measures_distances_from_the_start_of_fine_tuning(tmp_path):
    dataset = RandomClassificationDataset(size=64)
    common = dict(diagnostics_steps=2, max_steps=6, save_strategy="steps", save_steps=2)

    def run(output_dir, resume=None):
        model = tiny_model("bert", tmp_path)
        pretrained = parameters_of(model)
        trainer = StableTrainer(model=model, args=tiny_args(output_dir, **common), train_dataset=dataset)
        trainer.train(resume_from_checkpoint=resume)
        return model, pretrained, trainer

    _, _, full = run(tmp_path / "full")
    run(tmp_path / "interrupted")
    checkpoint = tmp_path / "interrupted" / "checkpoint-2"
    at_checkpoint = parameters_of(AutoModelForSequenceClassification.from_pretrained(checkpoint))
    model, pretrained, resumed = run(tmp_path / "resumed", resume=str(checkpoint))

    full_distances, resumed_distances = records_with(full, "l2_from_init/"), records_with(resumed, "l2_from_init/")
    assert sorted(resumed_distances) == [2, 4, 6]  # the history before the checkpoint is kept too
    final = parameters_of(model)
    from_start = group_norms((n, final[n] - pretrained[n]) for n in final)
    from_checkpoint = group_norms((n, final[n] - at_checkpoint[n]) for n in final)
    for group, value in from_start.items():
        assert resumed_distances[6][group] == pytest.approx(value, rel=1e-5), group
        assert resumed_distances[6][group] == pytest.approx(full_distances[6][group], rel=1e-4), group
        assert resumed_distances[6][group] > from_checkpoint[group] * 1.05, group


def test_collapsed_run_raises_the_alarm_at_the_check_point(tmp_path):
    dataset = SkewedDataset()
    args = tiny_args(tmp_path / "out", learning_rate=1e-9, degenerate_check_fraction=0.3, logging_steps=100)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=dataset)
    trainer.train()
    p = dataset.labels.float().mean().item()
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    summary = summarize_diagnostics(trainer.state.log_history)
    alarm = summary["degenerate_alarm"]
    assert alarm["step"] == math.ceil(0.3 * trainer.state.max_steps)  # forced log although logging_steps=100
    assert alarm["reason"] == "not_below_constant_loss" and alarm["aborted"] is False
    assert alarm["constant_prediction_loss"] == pytest.approx(entropy)
    assert alarm["train_loss"] > alarm["constant_prediction_loss"]
    assert trainer.state.global_step == trainer.state.max_steps  # not aborted
    assert sum(1 for r in trainer.state.log_history if r.get("degenerate_alarm")) == 1  # fires once


def test_healthy_loss_raises_no_alarm(tmp_path):
    callback = DegenerateRunCallback(constant_prediction_loss=10.0, check_fraction=0.3, abort=True)
    trainer = Trainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "out", logging_steps=100),
                      train_dataset=RandomClassificationDataset(), callbacks=[callback])
    trainer.train()
    assert callback.alarm is None and trainer.state.global_step == trainer.state.max_steps
    assert summarize_diagnostics(trainer.state.log_history)["degenerate_alarm"] is None


class NanAfter(TrainerCallback):
    """Turns the logits into NaN from update ``step`` on (a diverged run)."""

    def __init__(self, model, step):
        self.step, self.active = step, False
        model.classifier.register_forward_hook(lambda module, inputs, output: output * math.nan if self.active else output)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 >= self.step


def test_nonfinite_loss_aborts_at_once_and_is_recorded(tmp_path):
    model = tiny_model("bert", tmp_path)
    # logging_steps=100 and the Trainer's logging_nan_inf_filter hide the NaN from the logged loss
    args = tiny_args(tmp_path / "out", abort_degenerate_runs=True, logging_steps=100, num_train_epochs=3)
    trainer = StableTrainer(model=model, args=args, train_dataset=RandomClassificationDataset(),
                            callbacks=[NanAfter(model, step=3)])
    trainer.train()
    assert trainer.state.global_step == 3 < trainer.state.max_steps
    alarm = summarize_diagnostics(trainer.state.log_history)["degenerate_alarm"]
    assert alarm == {"step": 3, "reason": "nonfinite", "train_loss": None, "constant_prediction_loss": None,
                     "aborted": True}
    assert summarize_diagnostics(trainer.state.log_history)["abort_reason"] == "nonfinite"
    record = next(r for r in trainer.state.log_history if r.get("degenerate_alarm"))
    assert record["step"] == 3 and "loss" in record


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nonfinite_check_on_cuda_is_read_one_update_later_and_names_the_update(tmp_path):
    model = tiny_model("bert", tmp_path)
    callback = DegenerateRunCallback(check_fraction=0, abort=True)
    args = tiny_args(tmp_path / "out", use_cpu=False, logging_steps=100, num_train_epochs=3)
    trainer = Trainer(model=model, args=args, train_dataset=RandomClassificationDataset(),
                      callbacks=[NanAfter(model, step=3), callback])
    trainer.train()
    assert callback.alarm.step == 3 and trainer.state.global_step == 4  # read at the next update: no stall
    record = next(r for r in trainer.state.log_history if r.get("degenerate_alarm"))
    assert record["step"] == 4 and summarize_diagnostics(trainer.state.log_history)["degenerate_alarm"]["step"] == 3


def test_standalone_callback_records_the_alarm(tmp_path):
    model = tiny_model("bert", tmp_path)
    callback = DegenerateRunCallback(check_fraction=0, abort=True)
    trainer = Trainer(model=model, args=tiny_args(tmp_path / "out", logging_steps=100, logging_nan_inf_filter=False),
                      train_dataset=RandomClassificationDataset(), callbacks=[NanAfter(model, step=2), callback])
    trainer.train()
    assert callback.alarm is not None and callback.alarm.step == 2 and callback.alarm.aborted
    assert trainer.state.global_step == 2


@pytest.fixture
def integration(monkeypatch):
    """A reporter registered the way report_to integrations are: in the Trainer's default callbacks, before
    every callback passed in ``callbacks=[...]``."""
    import transformers.trainer

    reporter = Reporter()
    monkeypatch.setattr(transformers.trainer, "get_reporting_integration_callbacks", lambda report_to: [reporter])
    return reporter


def test_values_reach_every_reporter_and_the_log_history(tmp_path, integration):
    user_reporter = Reporter()
    args = tiny_args(tmp_path / "out", diagnostics_steps=3, logging_steps=100, degenerate_check_fraction=0.3)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                            callbacks=[user_reporter])
    trainer.train()

    expected = {"grad_norm/layer.0", "l2_from_init/head", "degenerate_alarm/constant_prediction_loss"}
    assert expected <= user_reporter.keys()
    assert expected <= integration.keys()
    history = summarize_diagnostics(trainer.state.log_history)
    assert [step for step, _ in history["grad_norm"]["layer.0"]] == [3, 6]  # logging_steps=100: forced records
    reported = [logs["grad_norm/layer.0"] for logs in integration.logs if "grad_norm/layer.0" in logs]
    assert reported == [value for _, value in history["grad_norm"]["layer.0"]]


def test_stock_trainer_needs_place_before_reporters_for_integrations(tmp_path, integration):
    def train(place):
        callback = StableFineTuningCallback()
        trainer = Trainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "out", diagnostics_steps=2),
                          train_dataset=RandomClassificationDataset(), callbacks=[callback])
        if place:
            place_before_reporters(trainer, callback)
        integration.logs.clear()
        trainer.train()
        assert summarize_diagnostics(trainer.state.log_history)["grad_norm"]  # log_history has them either way
        return any(k.startswith("grad_norm/") for k in integration.keys())

    assert not train(place=False)
    assert train(place=True)


def test_unsupported_architecture_falls_back_to_one_group(tmp_path):
    distance = ParameterDistanceCallback(every_n_steps=2)
    trainer = Trainer(model=tiny_model("albert", tmp_path), args=tiny_args(tmp_path / "out", max_steps=2),
                      train_dataset=RandomClassificationDataset(),
                      callbacks=[LayerGradNormCallback(every_n_steps=2), distance])
    trainer.train()
    record = next(r for r in trainer.state.log_history if "grad_norm/all" in r)
    assert record["grad_norm/all"] == pytest.approx(record["grad_norm"], rel=1e-5)
    assert record["l2_from_init/all"] > 0


def test_callbacks_from_args():
    from hf_stable_ft import FineTuningState

    args = tiny_args("unused", diagnostics_steps=5, degenerate_check_fraction=0.2, abort_degenerate_runs=True)
    callbacks = callbacks_from_args(args, FineTuningState(initial_parameters={}))
    assert [type(c) for c in callbacks] == [LayerGradNormCallback, ParameterDistanceCallback, DegenerateRunCallback]
    assert callbacks[0].every_n_steps == callbacks[1].every_n_steps == 5
    assert callbacks[2].check_fraction == 0.2 and callbacks[2].abort
    nan_only = callbacks_from_args(tiny_args("unused", abort_degenerate_runs=True), FineTuningState())
    assert [type(c) for c in nan_only] == [DegenerateRunCallback] and nan_only[0].check_fraction == 0
    assert callbacks_from_args(tiny_args("unused"), FineTuningState()) == []
    with pytest.raises(ValueError, match="every_n_steps"):
        LayerGradNormCallback(0)


def test_summarize_diagnostics_shape():
    history = [
        {"loss": 1.0, "grad_norm": 2.0, "grad_norm/layer.0": 0.5, "l2_from_init/head": 0.1, "step": 10},
        {"eval_loss": 0.9, "step": 10},
        {"loss": 0.9, "grad_norm/layer.0": 0.25, "l2_from_init/head": 0.2, "degenerate_alarm": 1.0,
         "degenerate_alarm/not_below_constant_loss": 1.0, "degenerate_alarm/train_loss": 0.9,
         "degenerate_alarm/constant_prediction_loss": 0.69, "degenerate_alarm/aborted": 1.0, "step": 20},
    ]
    assert {k: v for k, v in summarize_diagnostics(history).items() if k != "abort_reason"} == {
        "grad_norm": {"layer.0": [[10, 0.5], [20, 0.25]]},
        "l2_from_init": {"head": [[10, 0.1], [20, 0.2]]},
        "degenerate_alarm": {"step": 20, "reason": "not_below_constant_loss", "train_loss": 0.9,
                             "constant_prediction_loss": 0.69, "aborted": True},
    }
    assert summarize_diagnostics(history)["abort_reason"] == "not_below_constant_loss"
    assert summarize_diagnostics([]) == {"grad_norm": {}, "l2_from_init": {}, "degenerate_alarm": None,
                                         "abort_reason": None}


def test_labels_are_read_from_datasets_and_missing_labels_fail_clearly(tmp_path):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"input_ids": [[1, 2]] * 4, "label": [0, 1, 1, 1]})
    assert dataset_labels(table).tolist() == [0, 1, 1, 1]
    table.set_format("torch")
    assert dataset_labels(table).tolist() == [0, 1, 1, 1]
    assert dataset_labels(RandomClassificationDataset(size=6)).tolist() == RandomClassificationDataset(size=6).labels.tolist()
    regression = np.array([0.5, 1.5, 2.5])
    assert dataset_labels(datasets.Dataset.from_dict({"labels": regression})).tolist() == regression.tolist()

    class NoLabels(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"input_ids": torch.arange(5, 10)}

    trainer = Trainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "out"), train_dataset=NoLabels(),
                      callbacks=[DegenerateRunCallback(check_fraction=0.5)])
    with pytest.raises(ValueError, match="constant_prediction_loss="):
        trainer.train()


def test_loss_alarm_step_replays_the_loss_test_on_a_logged_history():
    """The loss test applied offline to a run's logs (``loss_alarm_step``), against values written out by hand:
    100 updates, check from update ceil(0.3·100) = 30, window ceil(0.1·100) = 10 updates, threshold 0.6."""
    from hf_stable_ft.diagnostics import loss_alarm_step

    def history(points):
        return [{"loss": loss, "step": step} for step, loss in points] + [{"eval_accuracy": 0.5, "step": 40}]

    # a logged loss stands for the updates since the previous log; logs every 5 updates, so the smoothed loss at
    # update s is the mean of the logs at s-5 and s (5 updates each)
    healthy = history([(5, 0.7), (10, 0.7), (15, 0.7), (20, 0.7), (25, 0.65), (30, 0.55), (35, 0.5), (40, 0.7),
                       (45, 0.4)])
    # at 30: (0.65·5 + 0.55·5) / 10 = 0.60 → not below 0.6: fires at 30
    assert loss_alarm_step(healthy, max_steps=100, constant_prediction_loss=0.6) == 30
    # threshold 0.61: 30 → 0.60 passes; 35 → (0.55+0.5)/2 = 0.525; 40 → (0.5+0.7)/2 = 0.60; 45 → 0.55: never
    assert loss_alarm_step(healthy, max_steps=100, constant_prediction_loss=0.61) is None
    # before the check update nothing is tested (0.7 at 5 and 10 is above 0.6 but too early)
    assert loss_alarm_step(history([(5, 0.9), (10, 0.9), (30, 0.1), (40, 0.1)]), max_steps=100,
                           constant_prediction_loss=0.6) is None
    # a late rise fires where it happens: at 30, 0.5; at 40, 0.59 (each log stands for 10 updates); at 50, 0.7
    assert loss_alarm_step(history([(30, 0.5), (40, 0.59), (50, 0.7)]), max_steps=100,
                           constant_prediction_loss=0.6) == 50
    # a non-finite logged loss fires at once, from any update
    assert loss_alarm_step(history([(5, float("nan"))]), max_steps=100, constant_prediction_loss=0.6) == 5
    assert loss_alarm_step(healthy, max_steps=100, constant_prediction_loss=0.6, check_fraction=0) is None
    with pytest.raises(ValueError, match="check_fraction"):
        loss_alarm_step(healthy, max_steps=100, constant_prediction_loss=0.6, check_fraction=1.5)


def test_loss_alarm_step_agrees_with_the_live_callback(tmp_path):
    """Replayed on the log the run wrote, the offline test names the update the callback fired at."""
    from hf_stable_ft.diagnostics import loss_alarm_step

    dataset = SkewedDataset()
    args = tiny_args(tmp_path / "out", learning_rate=1e-9, degenerate_check_fraction=0.3, logging_steps=2)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=dataset)
    trainer.train()
    alarm = summarize_diagnostics(trainer.state.log_history)["degenerate_alarm"]
    assert alarm is not None
    replayed = loss_alarm_step(trainer.state.log_history, max_steps=trainer.state.max_steps,
                               constant_prediction_loss=alarm["constant_prediction_loss"])
    assert replayed == alarm["step"]
    assert loss_alarm_step(trainer.state.log_history, max_steps=trainer.state.max_steps,
                           constant_prediction_loss=alarm["train_loss"] + 1.0) is None
