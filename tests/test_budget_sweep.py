"""The budget sweep's crossing sentence (``benchmarks/budget_sweep.py``): where LoRAPrune and LLM-Pruner cross,
read from the records' quotients, and an extrapolation that says it is one."""

from __future__ import annotations

import math

import pytest

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def sweep():
    return benchmark_script("budget_sweep")


def _runs(points: dict[int, tuple[list[float], list[float]]], ratio: float = 0.5) -> dict:
    """steps -> (LoRAPrune's wiki perplexities, LLM-Pruner's), one record per seed."""
    runs = {}
    for steps, (ours, theirs) in points.items():
        for method, values in (("loraprune", ours), ("llm-pruner", theirs)):
            runs[(steps, ratio, method)] = [{"seed": i, "metrics": {"ppl_wiki": v}} for i, v in enumerate(values)]
    return runs


def _on_line(a: tuple[int, float], b: tuple[int, float], steps: float) -> float:
    """The quotient at ``steps`` on the straight log-log line through a and b."""
    slope = (math.log(b[1]) - math.log(a[1])) / (math.log(b[0]) - math.log(a[0]))
    return math.exp(math.log(a[1]) + slope * (math.log(steps) - math.log(a[0])))


def test_a_sign_change_between_budgets_is_named_with_the_budgets_around_it(sweep):
    runs = _runs({40: ([300.0], [100.0]), 200: ([150.0, 170.0], [100.0, 100.0]), 1000: ([80.0], [100.0])})
    text = sweep.crossing(runs, 0.5)
    assert text.startswith("Crossing: between 200 and 1,000 steps (LoRAPrune ahead from 1,000")
    meet = sweep._meet((200, 1.6), (1000, 0.8))  # means: 160 / 100, then 80 / 100
    assert 200 < meet < 1000 and _on_line((200, 1.6), (1000, 0.8), meet) == pytest.approx(1.0)
    assert f"about {meet:,.0f} steps" in text


def test_a_narrowing_gap_is_extrapolated_and_says_so(sweep):
    runs = _runs({40: ([400.0], [100.0]), 200: ([150.0], [100.0]), 1000: ([120.0], [100.0])})
    text = sweep.crossing(runs, 0.5)
    assert "none measured; LLM-Pruner is ahead at every budget from 40 to 1,000 steps" in text
    meet = sweep._meet((200, 1.5), (1000, 1.2))
    assert meet > 1000 and _on_line((200, 1.5), (1000, 1.2), meet) == pytest.approx(1.0)
    assert f"near {meet:,.0f} steps (an extrapolation from two points, not a measurement)" in text
    before = sweep._meet((40, 4.0), (200, 1.5))  # the earlier pair's line met before 1,000 steps: said so
    assert before < 1000 and f"put it near {before:,.0f} steps, which 1,000 steps did not bear out" in text


def test_a_widening_gap_is_not_extrapolated(sweep):
    runs = _runs({40: ([150.0], [100.0]), 200: ([180.0], [100.0])})
    text = sweep.crossing(runs, 0.5)
    assert "The gap widened between the last two budgets (1.50x, then 1.80x)" in text
    assert "extrapolation" not in text and "which met near" not in text  # no narrowing before it to refute
    flat = sweep.crossing(_runs({40: ([150.0], [100.0]), 200: ([150.0], [100.0])}), 0.5)
    assert "did not narrow" in flat and "widened" not in flat


def test_a_gap_that_widens_after_narrowing_names_the_forecast_it_refutes(sweep):
    # the 50% sweep's shape: 3.6x, 1.47x, 1.23x, then 1.36x at 2,000 steps
    runs = _runs({40: ([360.0], [100.0]), 200: ([147.0], [100.0]), 1000: ([123.0], [100.0]),
                  2000: ([136.0], [100.0])})
    text = sweep.crossing(runs, 0.5)
    meet = sweep._meet((200, 1.47), (1000, 1.23))
    assert meet > 2000 and _on_line((200, 1.47), (1000, 1.23), meet) == pytest.approx(1.0)
    assert text.startswith("Crossing: none measured; LLM-Pruner is ahead at every budget from 40 to 2,000 steps.")
    assert "The gap widened between the last two budgets (1.23x, then 1.36x)" in text
    forecast = _on_line((200, 1.47), (1000, 1.23), 2000)
    assert forecast == pytest.approx(sweep._at((200, 1.47), (1000, 1.23), 2000)) and forecast < 1.23
    assert (f"(200 and 1,000), which met near {meet:,.0f} steps, gave {forecast:.2f}x at 2,000 steps, "
            "not the 1.36x measured") in text


def test_one_budget_is_not_enough_to_say_anything(sweep):
    assert "fewer than two budgets" in sweep.crossing(_runs({40: ([150.0], [100.0])}), 0.5)
    assert "fewer than two budgets" in sweep.crossing(_runs({40: ([150.0], [])}), 0.5)


def test_the_rendered_section_carries_the_sentence_under_each_ratio(sweep, monkeypatch):
    monkeypatch.setattr(sweep, "comparisons", lambda *args: [])  # paired bootstraps need the records' windows
    runs = _runs({40: ([300.0, 280.0], [100.0, 90.0]), 200: ([150.0, 140.0], [100.0, 110.0])}, 0.5)
    runs.update(_runs({40: ([90.0, 80.0], [50.0, 52.0]), 200: ([60.0, 62.0], [40.0, 41.0])}, 0.2))
    text = sweep.render(runs)
    assert text.count("Crossing:") == 2
    assert text.index("**20% structured**") < text.rindex("Crossing:")


def test_cells_below_100_keep_a_decimal_so_a_small_spread_shows(sweep):
    runs = [{"seed": 0, "metrics": {"ppl_wiki": 38.68}}, {"seed": 1, "metrics": {"ppl_wiki": 38.15}}]
    assert sweep._cell(runs) == "38.4 ± 0.4 (n 2)"
    big = [{"seed": 0, "metrics": {"ppl_wiki": 1339.4}}, {"seed": 1, "metrics": {"ppl_wiki": 1200.0}}]
    assert sweep._cell(big) == "1,270 ± 99 (n 2)"
    one = [{"seed": 0, "metrics": {"ppl_wiki": 50.1, "ppl_wiki_lo": 42.44, "ppl_wiki_hi": 58.24}}]
    assert sweep._cell(one) == "50.1 [42.4, 58.2] (n 1)"
