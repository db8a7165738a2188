"""Adaptation methods. :data:`METHODS` maps every method's name to its :class:`Method`; importing
this package registers the built-in ones (each module registers its own entries)."""

from da_pose.adapt.method import METHODS, AdaptJob, Method, RoundPlan, get_method, register, run_adaptation, variant
from da_pose.adapt import ccssl, mean_teacher, regda, scarcenet, uda_animal, uniframe, wscda  # noqa: F401,E402  (register CC-SSL, plain PL, ablations, WS-CDA, PPLO, mean teacher, RegDA, ScarceNet, UDA-Animal, UniFrame)

__all__ = ["METHODS", "AdaptJob", "Method", "RoundPlan", "get_method", "register", "run_adaptation", "variant"]
