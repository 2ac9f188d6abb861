"""What a run applies, as one JSON-ready record: resolved settings with their sources, the technique settings a
resume must match, and what preparation did. Logged at train start and stored in ``trainer_state.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .args import ADAMW_OPTIMS, TECHNIQUE_FIELDS, StableTrainingArguments
from .preparation import FineTuningState

__all__ = ["SETTINGS_KEY", "checkpoint_settings_mismatch", "read_checkpoint_settings", "settings_record"]

logger = logging.getLogger("hf_stable_ft")

#: Key of ``trainer_state.json``'s ``stateful_callbacks`` under which the record is stored.
SETTINGS_KEY = "hf_stable_ft"


def settings_record(args: StableTrainingArguments, state: FineTuningState | None, planned_updates: int | None = None) -> dict:
    """What a run applies, JSON-ready: the resolved settings with their sources, the technique settings a resume
    must match, and what preparation did (blocks re-drawn, Mixout layers, optimizer mode, updates)."""
    resolved = {name: {"value": _jsonable(entry["value"]), "source": entry["source"]}
                for name, entry in args.resolved_settings().items()}
    applied = {
        "optimizer": _optimizer_description(args),
        "reinitialized_blocks": state.reinit_layers if state is not None else 0,
        "reinitialized_pooler": bool(args.reinit_pooler),
        "mixout_layers": len(state.mixout_layers) if state is not None else 0,
    }
    if planned_updates is not None:
        applied["updates"] = int(planned_updates)
    return {"settings": resolved, "technique": {k: _jsonable(v) for k, v in args.technique_settings().items()},
            "applied": applied}


def _jsonable(value):
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _optimizer_description(args: StableTrainingArguments) -> str:
    optim = getattr(args.optim, "value", args.optim)
    if not args.uses_stable_optimizer and optim not in ADAMW_OPTIMS:
        return f"stock optim={optim}"
    mode = "BERTAdam (no bias correction)" if not args.adam_bias_correction else "bias-corrected AdamW"
    extras = []
    if args.layerwise_lr_decay < 1:
        extras.append(f"LLRD d={args.layerwise_lr_decay}")
    if args.pretrained_weight_decay > 0:
        extras.append(f"pretrained WD {args.pretrained_weight_decay}")
        if args.recadam_k > 0:
            extras.append(f"annealed by RecAdam (k={args.recadam_k}, t0={args.recadam_t0}) on every pretrained tensor")
    return f"StableAdamW, {mode}" + (f", {', '.join(extras)}" if extras else "")


def _log_summary(record: dict) -> None:
    settings = record["settings"]
    applied = record["applied"]
    chosen = ", ".join(
        f"{name}={entry['value']} ({entry['source']})" for name, entry in settings.items()
        if entry["source"] != "default"
    )
    parts = [applied["optimizer"]]
    if applied["reinitialized_pooler"] or applied["reinitialized_blocks"]:
        parts.append(f"re-initialised {'pooler + ' if applied['reinitialized_pooler'] else ''}top "
                     f"{applied['reinitialized_blocks']} block(s)")
    if applied["mixout_layers"]:
        parts.append(f"Mixout p={settings['mixout_prob']['value']} on {applied['mixout_layers']} Linear layers")
    if "updates" in applied:
        parts.append(f"{applied['updates']} updates")
    logger.info("hf_stable_ft: %s. Settings not at their defaults: %s", "; ".join(parts), chosen or "none")


def checkpoint_settings_mismatch(stored: dict, args: StableTrainingArguments) -> list[str]:
    """The technique settings in which a checkpoint's record (:func:`settings_record`) differs from ``args``."""
    saved = stored.get("technique", {}) if isinstance(stored, dict) else {}
    now = args.technique_settings()
    return [f"{name}: checkpoint {saved[name]!r}, now {now[name]!r}"
            for name in TECHNIQUE_FIELDS if name in saved and saved[name] != _jsonable(now[name])]


def _resume_refusal(differ: list[str]) -> str:
    return ("cannot resume: the checkpoint was trained with other hf_stable_ft settings (" + "; ".join(differ) + "). "
            "Resume with the checkpoint's settings, or start a new run in another output_dir.")


def read_checkpoint_settings(checkpoint: str) -> dict | None:
    """The settings record stored in ``checkpoint``'s ``trainer_state.json``, if any."""
    path = Path(checkpoint) / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        stateful = json.loads(path.read_text()).get("stateful_callbacks") or {}
    except (OSError, ValueError):
        return None
    return stateful.get(SETTINGS_KEY)
