"""Smoke test of benchmarks/quality.py: a --quick run writes consistent results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynams_service import SelectionPolicy

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "quality.py"
REQUIRED = ("method", "ratio", "seed", "epochs", "final_accuracy", "best_accuracy",
            "fraction_trained", "wall_seconds", "train_seconds", "scoring_seconds",
            "total_compute_seconds")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Path:
    """Run ``quality.py --quick`` once into a temporary --out and return that directory."""
    out = tmp_path_factory.mktemp("quality")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out),
         "--data-dir", str(fashion_mnist_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"quality.py --quick failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_writes_json_markdown_and_plots(quick_run: Path) -> None:
    for name in ("quality.json", "quality.md", "psp_cost.json",
                 "quality_accuracy_vs_fraction.png", "quality_accuracy_vs_compute.png"):
        path = quick_run / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert (quick_run / "quality_accuracy_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"
    md = (quick_run / "quality.md").read_text()
    assert "| method | ratio |" in md and "dynams-psp-0.25" in md and "±" in md


def test_records_are_complete_and_consistent(quick_run: Path) -> None:
    records = json.loads((quick_run / "quality.json").read_text())
    by_method = {r["method"]: r for r in records}
    assert {"full", "uniform", "infobatch", "dynams-full-proxy", "dynams-psp-0.25",
            "uniform-compute-matched"} <= set(by_method)
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, (r["method"], missing)
        assert 0.0 <= r["final_accuracy"] <= 1.0 and 0.0 <= r["best_accuracy"] <= 1.0
        assert r["best_accuracy"] >= r["final_accuracy"]
        assert 0.0 < r["fraction_trained"] <= 1.0
        assert r["total_compute_seconds"] == pytest.approx(
            r["train_seconds"] + r["scoring_seconds"])
        assert r["wall_seconds"] >= r["total_compute_seconds"]
        assert r["epochs"] == 3

    assert by_method["full"]["fraction_trained"] == 1.0
    assert by_method["full"]["final_accuracy"] > 0.1  # above chance on 10 classes
    # 1 warm-up epoch on all data, then 2 epochs at r = 0.3: (1 + 0.3 + 0.3) / 3.
    for method in ("uniform", "dynams-full-proxy", "dynams-psp-0.25"):
        r = by_method[method]
        assert r["ratio"] == 0.3
        assert r["fraction_trained"] == pytest.approx((1 + 0.3 + 0.3) / 3, abs=1e-3)
        assert r["epoch_sizes"] == [r["num_train"], 300, 300]
    # Same plan, same optimizer steps for every subset method at the ratio.
    assert by_method["uniform"]["optimizer_steps"] == by_method["dynams-psp-0.25"][
        "optimizer_steps"] == by_method["dynams-full-proxy"]["optimizer_steps"]
    # Scoring is only spent by methods that score.
    assert by_method["dynams-psp-0.25"]["scoring_seconds"] > 0
    assert by_method["full"]["scoring_seconds"] < 0.05
    # InfoBatch trains on full data in its first and (annealed) last epoch.
    ib = by_method["infobatch"]
    assert ib["epoch_sizes"][0] == ib["epoch_sizes"][-1] == ib["num_train"] == 1000
    assert ib["fraction_trained"] == pytest.approx(sum(ib["epoch_sizes"]) / (3 * 1000))
    # The compute-matched baseline runs uniform at a ratio derived from measured cost.
    cm = by_method["uniform-compute-matched"]
    assert 0.0 < cm["subset_ratio"] <= 1.0
    assert cm["config"]["matched_to"] == "dynams-psp-0.25"


def test_psp_cost_is_reported(quick_run: Path) -> None:
    costs = json.loads((quick_run / "psp_cost.json").read_text())
    (cost,) = costs.values()
    for key in ("plain", "joint-0.25", "joint-0.5", "joint-0.25-bf0.5", "joint-0.25-bf0.25"):
        assert cost["step_ms_median"][key] > 0
    assert cost["score_proxy_0.25_seconds"] > 0
    assert set(cost["joint_overhead_pct"]) == {"0.25", "0.5", "0.25-bf0.5", "0.25-bf0.25",
                                               "0.25-bf0.5-ev2", "0.25-bf0.5-ev4"}


def _load_quality():
    """Import benchmarks/quality.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_method_names_parse_into_knobs() -> None:
    q = _load_quality()
    spec = q.parse_method("dynams-psp-0.25-signed-int2-warm3-lam0.5")
    assert (spec.kind, spec.psp_width, spec.lam) == ("dynams-psp", 0.25, 0.5)
    assert spec.policy_knobs == (("interval_epochs", 2), ("score", "signed"),
                                 ("warmup_epochs", 3))
    assert q.parse_method("uniform-compute-matched").kind == "uniform-compute-matched"
    assert q.parse_method("uniform-psp-0.5").psp_width == 0.5
    assert q.parse_method("dynams-full-proxy-global").knobs["class_balance"] == "global"
    spec = q.parse_method("dynams-psp-0.25-bf0.5-distill-pipe")
    assert (spec.psp_batch_fraction, spec.distill, spec.knobs["staleness"]) == (0.5, True,
                                                                               "pipelined")
    assert spec.policy(0.3, seed=0).staleness == "pipelined"
    # Every policy field parses by its own name, typed and bounded by the policy.
    policy = q.parse_method("dynams-psp-0.25-power-power_exponent2").policy(0.3, seed=0)
    assert (policy.ratio_schedule, policy.power_exponent) == ("power", 2.0)
    assert q.parse_method("dynams-psp-0.25").knobs == {
        **{n: f.default for n, f in SelectionPolicy.model_fields.items()
           if n not in ("ratio", "seed")}, "class_balance": "per_class", "staleness": "sync"}
    for bad in ("dynams", "dynams-psp", "dynams-psp-0.3", "uniform-signed", "full-bogus",
                "uniform-bf0.5", "dynams-full-proxy-distill", "static-margin-pipe",
                "uniform-psp-0.25-pipe", "dynams-psp-0.25-int2.5", "dynams-psp-0.25-exp2",
                "dynams-psp-0.25-ccs4"):
        with pytest.raises(ValueError):
            q.parse_method(bad)


def test_infobatch_prunes_only_below_mean_losses() -> None:
    import torch

    q = _load_quality()
    cfg = q.RunConfig(method=q.parse_method("infobatch"), ratio=None, seed=0, epochs=8,
                      max_samples=None, infobatch_prune=0.5)
    loss = torch.cat([torch.full((500,), 0.1), torch.full((500,), 2.0)])
    keep, weights = q._infobatch_subset(loss, cfg, epoch=1, anneal_from=7)
    assert set(range(500, 1000)) <= set(keep.tolist())  # high-loss samples all kept
    assert 150 < 1000 - len(keep) < 350  # about half of the 500 low-loss ones dropped
    assert torch.all(weights[keep < 500] == 2.0) and torch.all(weights[keep >= 500] == 1.0)
    full, _ = q._infobatch_subset(loss, cfg, epoch=7, anneal_from=7)
    assert len(full) == 1000


def test_compute_matched_ratio_from_cpu_seconds() -> None:
    q = _load_quality()
    common = {"ratio": 0.3, "epochs": 10, "max_samples": 1000}
    records = [
        {**common, "method": "uniform", "train_cpu_seconds": 37.0, "sample_iterations": 3700},
        {**common, "method": "dynams-psp-0.25", "total_compute_cpu_seconds": 46.0},
    ]
    ratio, info = q.compute_matched_ratio(records, 0.3, 10, 1000, num_train=1000)
    # 46 s at 0.01 s per sample-iteration = 4600 iterations = 1 full epoch + 9 × 400.
    assert ratio == pytest.approx(0.4)
    assert info["matched_to"] == "dynams-psp-0.25"
    assert q.compute_matched_ratio(records[:1], 0.3, 10, 1000, num_train=1000) is None


def test_pipelined_scores_weights_from_before_the_epoch_ended(
        fashion_mnist_dir: Path) -> None:
    """A pipelined run selects from a snapshot taken a quarter epoch early: the same plan
    as sync, a different selection."""
    q = _load_quality()
    data = q.load_data(str(fashion_mnist_dir), 600, 100)
    runs = [q.train_run(q.RunConfig(method=q.parse_method(name), ratio=0.3, seed=0,
                                    epochs=3, max_samples=600, batch_size=64), data, log=False)
            for name in ("dynams-full-proxy", "dynams-full-proxy-pipe")]
    sync, pipe = runs
    assert sync.epoch_sizes == pipe.epoch_sizes == [600, 180, 180]
    assert pipe.config["staleness"] == "pipelined"
    assert len(sync.selection_digests) == len(pipe.selection_digests) == 2
    assert sync.selection_digests[0] != pipe.selection_digests[0]  # older weights


def test_every_base_kind_has_one_sample_chooser() -> None:
    q = _load_quality()
    from benchmarks.quality_methods import BASE_KINDS

    assert set(q.CHOOSERS) == set(BASE_KINDS)
    assert all(callable(choose) for choose in q.CHOOSERS.values())


def test_quick_runs_never_write_into_the_committed_results(tmp_path: Path) -> None:
    q = _load_quality()
    quick = q.output_dir(None, quick=True)
    assert quick.parent == REPO / "runs" and quick.name.startswith("quality-quick-")
    assert q.output_dir(tmp_path, quick=True) == tmp_path
    for inside in (q.DEFAULT_OUT, q.DEFAULT_OUT / "sub"):
        with pytest.raises(ValueError, match="--quick must not write"):
            q.output_dir(inside, quick=True)
    assert q.output_dir(None, quick=False) == q.DEFAULT_OUT == REPO / "benchmarks" / "results"


def test_knob_effects_and_sweep_tables_pair_runs_by_seed() -> None:
    _load_quality()  # puts the repository root on sys.path, as a script run does
    from benchmarks import quality_report as q

    def run(method: str, ratio: float | None, seed: int, acc: float, epochs: int = 8,
            **extra: float) -> dict:
        return {"method": method, "ratio": ratio, "seed": seed, "final_accuracy": acc,
                "epochs": epochs, "max_samples": 1000, "fraction_trained": 0.4,
                "subset_ratio": ratio, **extra}

    records = [run("dynams-psp-0.25", 0.3, s, a) for s, a in ((0, 0.90), (1, 0.80))]
    records += [run("dynams-psp-0.25-global", 0.3, s, a) for s, a in ((0, 0.91), (1, 0.83))]
    records += [run("dynams-psp-0.25-signed", 0.3, 0, 0.85)]
    records += [run("uniform", r, s, 0.85) for r in (0.3, 0.5) for s in (0, 1)]
    records += [run("dynams-psp-0.25", 0.5, s, 0.86) for s in (0, 1)]
    records += [run("full", 1.0, s, 0.95, epochs=e) for s in (0, 1) for e in (8, 20)]
    records += [run("dynams-psp-0.25", 0.3, s, 0.93, epochs=20) for s in (0, 1)]
    effects = q.knob_effects(records, 1000, 8)
    assert [e[0] for e in effects] == ["dynams-psp-0.25-signed", "dynams-psp-0.25-global"]
    signed, glob = effects
    assert signed[1:] == pytest.approx((-5.0, 0.0, 1))
    assert glob[1] == pytest.approx(2.0) and glob[3] == 2  # (+1, +3) paired by seed
    sweep = "\n".join(q._sweep_lines(records))
    assert "| 0.5 | 0.400 | 85.00 ± 0.00 | 86.00 ± 0.00 | +1.00 ± 0.00 (n=2) |" in sweep
    length = "\n".join(q._length_lines(records))
    assert "| 1000 | 20 | 95.00 ± 0.00 | — | 93.00 ± 0.00 | -2.00 ± 0.00 (n=2) | — |" in length


def test_reweighting_methods_train_on_the_rules_weights_and_record_diagnostics(
        fashion_mnist_dir: Path) -> None:
    """``-exp<e>-rw``: the selection is the explore rule's, each epoch's loss weighted by
    its weights (REUSE epochs keep them); the record says why (churn, unlearned, mix)."""
    q = _load_quality()
    assert q.parse_method("dynams-psp-0.25-global-exp0.5-rw").knobs["reweight"] == "inverse"
    assert q.parse_method("dynams-psp-0.25-global-exp0.5-rwn").knobs["reweight"] \
        == "normalized"
    for bad in ("dynams-psp-0.25-rw", "dynams-psp-0.25-exp0.5-rw", "uniform-exp0.5-rw"):
        with pytest.raises(ValueError):  # needs explore, global selection, a dynamic base
            q.parse_method(bad)
    data = q.load_data(str(fashion_mnist_dir), 600, 100, label_noise=0.2)
    assert int(data.flipped.sum()) == 120
    cfg = q.RunConfig(method=q.parse_method("dynams-full-proxy-global-exp0.5-rw-int2"),
                      ratio=0.3, seed=0, epochs=5, max_samples=600, batch_size=64)
    record = q.train_run(cfg, data, log=False)
    d = record.diagnostics
    assert len(d["selection_unlearned"]) == 2 and len(d["selection_overlap"]) == 1
    assert len(d["selection_mislabeled"]) == 2 and d["mislabeled_share"] == pytest.approx(0.2)
    w = (600 - 90) / 90  # 180 selected: 90 in the hard cut, 90 drawn from the other 510
    assert d["selection_max_weight"] == [pytest.approx(w)] * 2
    assert 0.3 <= d["ever_selected_share"] <= 0.6 and sum(d["last_selection_class_shares"]) \
        == pytest.approx(1.0)


def test_long_tailed_data_decays_geometrically_and_keeps_a_balanced_test_set(
        fashion_mnist_dir: Path) -> None:
    import torch

    q = _load_quality()
    data = q.load_data(str(fashion_mnist_dir), 6000, 1000, long_tail=10)
    sizes = torch.bincount(data.y_train, minlength=10).tolist()
    balanced = q.load_data(str(fashion_mnist_dir), 6000, 1000)
    smallest = min(torch.bincount(balanced.y_train, minlength=10).tolist())
    assert sizes[0] == smallest and sizes[9] == smallest // 10
    assert sizes == sorted(sizes, reverse=True)
    assert torch.equal(data.y_test, balanced.y_test)  # the test set is untouched
    with pytest.raises(ValueError, match="long-tail"):
        q.long_tail_rows(data.y_train, 0.5, num_classes=10)
