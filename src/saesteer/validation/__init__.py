"""Validation on a real model: an application on top of training, feature facts and sweeps (see docs/validation.md)."""

from saesteer.validation.criterion import chance_clear, clearest, no_fluency_score, top_hits
from saesteer.validation.run import (DEFAULT_MODEL, REPORT_KEYS, FeatureOutcome, PromptOutcome,
                                     Validation, ValidationConfig, validate)

__all__ = ["DEFAULT_MODEL", "REPORT_KEYS", "FeatureOutcome", "PromptOutcome", "Validation",
           "ValidationConfig", "chance_clear", "clearest", "no_fluency_score", "top_hits", "validate"]
