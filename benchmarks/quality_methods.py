"""The quality benchmark's methods: their names, what each name means, and the catalogue.

A method name is ``base[-α][-knob...]``; :func:`parse_method` turns it into a
:class:`MethodSpec` that ``quality.py`` trains and ``quality_report.py`` tabulates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynams_service import SelectionPolicy, build_architecture

ARCHITECTURE = "fmnist-cnn"
DEFAULT_DYNAMS = "dynams-psp-0.25"  # what ablations are compared against
MAIN_METHODS = (
    "full", "uniform", "static-margin", "infobatch", "dynams-full-proxy", "dynams-psp-0.25",
    "uniform-psp-0.25", "uniform-compute-matched",
)
QUICK_METHODS = ("full,uniform,infobatch,dynams-full-proxy,dynams-psp-0.25,"
                 "uniform-compute-matched")
PLOTTED_METHODS = (*MAIN_METHODS, "dynams-psp-0.5")  # ablations get their own chart
ABLATION_METHODS = (
    "dynams-psp-0.25-signed", "dynams-psp-0.25-global", "dynams-psp-0.25-int2",
    "dynams-psp-0.25-int5", "dynams-psp-0.25-warm0", "dynams-psp-0.25-warm3",
    "dynams-psp-0.25-power", "dynams-psp-0.5", "dynams-psp-0.25-lam0.5",
    "dynams-psp-0.25-lam2", "dynams-psp-0.25-bf0.5", "dynams-psp-0.25-distill",
    "dynams-psp-0.25-pipe", "uniform-psp-0.25-lam0.5", "uniform-psp-0.25-bf0.5",
    "uniform-warm0", "uniform-warm3",
)
BASE_KINDS = ("full", "uniform", "static-margin", "infobatch", "dynams-full-proxy",
              "dynams-psp", "uniform-psp", "uniform-compute-matched")

@dataclass(frozen=True)
class MethodSpec:
    """What a method name means: its base kind, PSP width and the policy knobs it changes."""

    name: str
    kind: str
    psp_width: float | None = None  # width of the joint-loss sub-network (None: plain CE)
    lam: float = 1.0
    margin_mode: str = "distance"  # the registered score ranked by (policy.score)
    class_balance: str = "per_class"
    interval_epochs: int = 1
    warmup_epochs: int = 1
    ratio_schedule: str = "constant"
    psp_batch_fraction: float = 1.0  # share of each batch the PSP loss sees
    distill: bool = False  # PSP learns the full model's softened outputs instead of labels
    staleness: str = "sync"  # "pipelined": score weights snapshotted PIPE_LEAD epochs early
    explore: float = 0.0  # policy.explore: share of each selection drawn uniformly
    coverage_strata: int = 0  # policy.coverage_strata (CCS); 0: off
    coverage_prune: float = 0.1  # policy.coverage_prune
    anneal_epochs: int = 0  # policy.anneal_epochs: full-data epochs at the end
    psp_every: int = 1  # the joint PSP loss on every k-th step only (JointPSP(every=k))

    @property
    def follows_plan(self) -> bool:
        """Whether every epoch's size is fixed by the plan (InfoBatch's are only known as it
        goes, so it is not checked against the plan and its LR follows epoch progress)."""
        return self.kind != "infobatch"

    def policy(self, ratio: float, seed: int) -> SelectionPolicy:
        """The selection policy (and so the plan) this method trains under at ``ratio``."""
        return SelectionPolicy(
            ratio=ratio, warmup_epochs=self.warmup_epochs, interval_epochs=self.interval_epochs,
            score=self.margin_mode, class_balance=self.class_balance,
            ratio_schedule=self.ratio_schedule, seed=seed, staleness=self.staleness,
            explore=self.explore, coverage_strata=self.coverage_strata,
            coverage_prune=self.coverage_prune, anneal_epochs=self.anneal_epochs,
        )


def parse_method(name: str, default_lam: float = 1.0) -> MethodSpec:
    """Parse ``base[-α][-knob...]`` into a :class:`MethodSpec`; raise ValueError if unknown."""
    base = next((b for b in sorted(BASE_KINDS, key=len, reverse=True)
                 if name == b or name.startswith(b + "-")), None)
    if base is None:
        raise ValueError(f"unknown method {name!r}; bases: {', '.join(BASE_KINDS)}")
    tokens = [t for t in name[len(base):].split("-") if t]
    fields: dict[str, Any] = {"lam": default_lam}
    if base in ("dynams-psp", "uniform-psp"):
        if not tokens:
            raise ValueError(f"{name!r}: PSP methods need a width, e.g. {base}-0.25")
        width = float(tokens.pop(0))
        if width not in build_architecture(ARCHITECTURE).widths or width == 1.0:
            raise ValueError(f"{name!r}: PSP width must be one of 0.5, 0.25")
        fields["psp_width"] = width
    for token in tokens:
        if token in ("signed", "distance", "loss", "el2n"):
            fields["margin_mode"] = token
        elif token.startswith("exp") and _is_number(token[3:]):
            fields["explore"] = float(token[3:])
        elif token.startswith("ccs") and token[3:].isdigit():
            fields["coverage_strata"] = int(token[3:])
        elif token.startswith("cp") and _is_number(token[2:]):
            fields["coverage_prune"] = float(token[2:])
        elif token.startswith("ann") and token[3:].isdigit():
            fields["anneal_epochs"] = int(token[3:])
        elif token.startswith("ev") and token[2:].isdigit() and int(token[2:]) >= 1:
            fields["psp_every"] = int(token[2:])
        elif token in ("global", "perclass"):
            fields["class_balance"] = "global" if token == "global" else "per_class"
        elif token == "power":
            fields["ratio_schedule"] = "power"
        elif token.startswith("int") and token[3:].isdigit():
            fields["interval_epochs"] = int(token[3:])
        elif token.startswith("warm") and token[4:].isdigit():
            fields["warmup_epochs"] = int(token[4:])
        elif token.startswith("lam"):
            fields["lam"] = float(token[3:])
        elif token.startswith("bf"):
            fields["psp_batch_fraction"] = float(token[2:])
        elif token == "distill":
            fields["distill"] = True
        elif token == "pipe":
            fields["staleness"] = "pipelined"
        else:
            raise ValueError(f"{name!r}: unknown knob suffix {token!r}")
    if (("psp_batch_fraction" in fields or "distill" in fields or "psp_every" in fields)
            and "psp_width" not in fields):
        raise ValueError(f"{name!r}: -bf, -ev and -distill only apply to PSP methods")
    if (any(k in fields for k in ("explore", "coverage_strata", "coverage_prune"))
            and base not in ("dynams-full-proxy", "dynams-psp")):
        raise ValueError(f"{name!r}: -exp, -ccs and -cp only apply to dynamic selection")
    if fields.get("staleness") == "pipelined" and base not in ("dynams-full-proxy",
                                                               "dynams-psp"):
        raise ValueError(f"{name!r}: -pipe only applies to dynamic margin methods")
    if fields.get("margin_mode", "distance") != "distance" and base not in (
            "dynams-full-proxy", "dynams-psp", "static-margin"):
        raise ValueError(f"{name!r}: score suffixes only apply to margin-based methods")
    spec = MethodSpec(name=name, kind=base, **fields)
    if base in ("dynams-full-proxy", "dynams-psp", "static-margin", "uniform",
                "uniform-psp"):
        spec.policy(0.3, 0)  # the policy's own checks (e.g. coverage needs -global)
    return spec


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
