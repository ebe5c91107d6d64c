"""The quality benchmark's methods: their names, what each name means, and the catalogue.

A method name is ``base[-α][-knob...]``; :func:`parse_method` turns it into a
:class:`MethodSpec` that ``quality.py`` trains and ``quality_report.py`` tabulates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from pydantic import ValidationError

from dynams_service import SelectionPolicy, build_architecture
from dynams_service.core.selection.scores import scores

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

# The benchmark trains under the policy's defaults except these (per-class quotas compare
# with the paper; "sync" scores the weights of the epoch's end).
BENCHMARK_POLICY = {"class_balance": "per_class", "staleness": "sync"}
# Short names in method names for policy knobs and values ("-int2": interval_epochs=2,
# "-pipe": staleness="pipelined"). Any policy field also parses by its own name
# ("-power_exponent2"); which knobs exist, their types and bounds are the policy's.
KNOB_PREFIXES = {"int": "interval_epochs", "warm": "warmup_epochs", "ann": "anneal_epochs",
                 "exp": "explore", "ccs": "coverage_strata", "cp": "coverage_prune"}
VALUE_ALIASES = {"pipe": "pipelined", "perclass": "per_class", "rw": "inverse",
                 "rwn": "normalized"}
NOT_KNOBS = {"ratio", "seed"}  # set per run, never by a method name
DYNAMIC = ("dynams-full-proxy", "dynams-psp")  # bases that select every round
MARGIN_BASED = (*DYNAMIC, "static-margin")


@dataclass(frozen=True)
class MethodSpec:
    """What a method name means: its base kind, PSP width, the trainer's knobs and the
    selection-policy knobs it changes (``policy_knobs``, field name → value)."""

    name: str
    kind: str
    psp_width: float | None = None  # width of the joint-loss sub-network (None: plain CE)
    lam: float = 1.0
    psp_batch_fraction: float = 1.0  # share of each batch the PSP loss sees
    distill: bool = False  # PSP learns the full model's softened outputs instead of labels
    psp_every: int = 1  # the joint PSP loss on every k-th step only (JointPSP(every=k))
    policy_knobs: tuple[tuple[str, Any], ...] = ()

    @property
    def knobs(self) -> dict[str, Any]:
        """Every policy knob's value for this method (ratio and seed excepted)."""
        defaults = {n: f.default for n, f in SelectionPolicy.model_fields.items()
                    if n not in NOT_KNOBS}
        return {**defaults, **BENCHMARK_POLICY, **dict(self.policy_knobs)}

    @property
    def follows_plan(self) -> bool:
        """Whether every epoch's size is fixed by the plan (InfoBatch's are only known as it
        goes, so it is not checked against the plan and its LR follows epoch progress)."""
        return self.kind != "infobatch"

    def policy(self, ratio: float, seed: int) -> SelectionPolicy:
        """The selection policy (and so the plan) this method trains under at ``ratio``."""
        return SelectionPolicy(ratio=ratio, seed=seed, **self.knobs)


def parse_method(name: str, default_lam: float = 1.0) -> MethodSpec:
    """Parse ``base[-α][-knob...]`` into a :class:`MethodSpec`; raise ValueError if unknown."""
    base = next((b for b in sorted(BASE_KINDS, key=len, reverse=True)
                 if name == b or name.startswith(b + "-")), None)
    if base is None:
        raise ValueError(f"unknown method {name!r}; bases: {', '.join(BASE_KINDS)}")
    tokens = [t for t in name[len(base):].split("-") if t]
    fields: dict[str, Any] = {"lam": default_lam}
    knobs: dict[str, Any] = {}
    if base in ("dynams-psp", "uniform-psp"):
        if not tokens:
            raise ValueError(f"{name!r}: PSP methods need a width, e.g. {base}-0.25")
        width = float(tokens.pop(0))
        if width not in build_architecture(ARCHITECTURE).widths or width == 1.0:
            raise ValueError(f"{name!r}: PSP width must be one of 0.5, 0.25")
        fields["psp_width"] = width
    for token in tokens:
        if token.startswith("ev") and token[2:].isdigit() and int(token[2:]) >= 1:
            fields["psp_every"] = int(token[2:])
        elif token.startswith("lam") and _is_number(token[3:]):
            fields["lam"] = float(token[3:])
        elif token.startswith("bf") and _is_number(token[2:]):
            fields["psp_batch_fraction"] = float(token[2:])
        elif token == "distill":
            fields["distill"] = True
        else:
            knob, value = _policy_knob(name, token)
            knobs[knob] = value
    if (("psp_batch_fraction" in fields or "distill" in fields or "psp_every" in fields)
            and "psp_width" not in fields):
        raise ValueError(f"{name!r}: -bf, -ev and -distill only apply to PSP methods")
    if knobs.keys() & {"explore", "coverage_strata", "coverage_prune", "reweight"} \
            and base not in DYNAMIC:
        raise ValueError(f"{name!r}: -exp, -ccs, -cp and -rw only apply to dynamic selection")
    if knobs.get("staleness") == "pipelined" and base not in DYNAMIC:
        raise ValueError(f"{name!r}: -pipe only applies to dynamic margin methods")
    if knobs.get("score", "distance") != "distance" and base not in MARGIN_BASED:
        raise ValueError(f"{name!r}: score suffixes only apply to margin-based methods")
    spec = MethodSpec(name=name, kind=base, policy_knobs=tuple(sorted(knobs.items())),
                      **fields)
    if base in (*MARGIN_BASED, "uniform", "uniform-psp"):
        try:
            spec.policy(0.3, 0)  # the policy's own checks (e.g. coverage needs -global)
        except ValidationError as exc:
            raise ValueError(f"{name!r}: {exc.errors()[0]['msg']}") from None
    return spec


def _policy_knob(name: str, token: str) -> tuple[str, Any]:
    """The policy field and value a name token sets: a registered score, a value of one of
    the policy's literal fields, or a numeric field by short or full name and its value."""
    if token in scores():
        return "score", token
    value = VALUE_ALIASES.get(token, token)
    for field, info in SelectionPolicy.model_fields.items():
        if field not in NOT_KNOBS and value in get_args(info.annotation):
            return field, value
    numeric = {**KNOB_PREFIXES, **{f: f for f, i in SelectionPolicy.model_fields.items()
                                   if f not in NOT_KNOBS and i.annotation in (int, float)}}
    for prefix in sorted(numeric, key=len, reverse=True):
        number = token[len(prefix):]
        if token.startswith(prefix) and _is_number(number):
            field = numeric[prefix]
            kind = SelectionPolicy.model_fields[field].annotation
            if kind is int and not number.isdigit():
                raise ValueError(f"{name!r}: {field} takes an integer, got {number!r}")
            return field, kind(number)
    raise ValueError(f"{name!r}: unknown knob suffix {token!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
