"""A job's own config (Hydra's node left out) as plain containers, read node by node."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def task_container(cfg: DictConfig, resolve: bool, enum_to_str: bool = False) -> dict:
    """cfg without its hydra node, as OmegaConf.to_container gives it for a masked copy of the
    task's keys, without first copying every node (Hydra's node is two thirds of a job's
    config; a copy costs ~70 us a node). A top-level value that is not a node of its own (1,
    ???, ${...}) is read from that masked copy, where an interpolation may name any task key."""
    task_keys = [key for key in cfg if key != "hydra"]
    out, others = {}, []
    for key in task_keys:
        kept_as_written = OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key)
        node = None if kept_as_written else cfg[key]
        if OmegaConf.is_config(node):
            out[key] = OmegaConf.to_container(node, resolve=resolve, enum_to_str=enum_to_str)
        else:
            out[key] = None  # (holds its place in the order)
            others.append(key)
    if others:
        whole = OmegaConf.to_container(
            OmegaConf.masked_copy(cfg, task_keys), resolve=resolve, enum_to_str=enum_to_str
        )
        out.update({key: whole[key] for key in others})
    return out
