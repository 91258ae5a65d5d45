"""Figures: the data handed to drawing, and byte-stable files across saves (not pixels)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from expost.posts import figures
from expost.errors import ExpostError


def loss_runs(seeds=4, steps=300, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    return np.exp(-t / 100) + 0.05 * rng.random((seeds, steps)) + 0.01


def test_import_does_not_load_matplotlib():
    code = "import sys, expost.posts.figures; print(any(m.startswith('matplotlib') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_same_data_gives_identical_bytes(tmp_path, suffix):
    data = {"a": loss_runs(), "b": loss_runs(seed=1) * 2}
    figures.curves(tmp_path / f"one.{suffix}", data, logy=True, title="t")
    figures.curves(tmp_path / f"two.{suffix}", data, logy=True, title="t")
    first = (tmp_path / f"one.{suffix}").read_bytes()
    assert first == (tmp_path / f"two.{suffix}").read_bytes()
    if suffix == "png":
        assert first.startswith(b"\x89PNG") and b"Software" not in first
    else:
        assert b"<svg" in first and b"<dc:date>" not in first


def test_identical_bytes_across_processes(tmp_path):
    """A rebuild is a new process: SVG ids must not depend on a per-process random salt."""
    script = textwrap.dedent(f"""
        import numpy as np
        from expost.posts import figures
        data = {{"a": np.linspace(1, 0.1, 50)[None] * np.array([[1.0], [1.1]])}}
        figures.curves({str(tmp_path)!r} + "/{{}}.svg".format(__import__("sys").argv[1]), data)
        figures.scalar_by_condition({str(tmp_path)!r} + "/{{}}.png".format(__import__("sys").argv[1]),
                                    {{"x": [1.0, 2.0, 3.0], "y": [2.0, 3.0, 4.0]}})
    """)
    for name in ("p1", "p2"):
        subprocess.run([sys.executable, "-c", script, name], check=True)
    for ext in ("svg", "png"):
        assert (tmp_path / f"p1.{ext}").read_bytes() == (tmp_path / f"p2.{ext}").read_bytes()


def test_downsample_keeps_a_single_step_spike_in_order():
    y = np.ones(100_000)
    y[54_321] = 1e6
    y[77_777] = -1e6
    idx, vals = figures.downsample_minmax(y, 1000)
    assert len(idx) <= 1000
    assert np.all(np.diff(idx) > 0)
    assert idx[0] == 0 and idx[-1] == len(y) - 1
    np.testing.assert_array_equal(vals, y[idx])
    assert 54_321 in idx and 77_777 in idx


def test_downsample_short_series_untouched_and_nonfinite_never_beats_finite():
    idx, vals = figures.downsample_minmax([3.0, 1.0, 2.0], 10)
    assert list(idx) == [0, 1, 2] and list(vals) == [3.0, 1.0, 2.0]
    y = np.arange(10_000, dtype=float)
    y[5000] = np.inf
    y[8000:9000] = np.nan  # whole buckets of NaN stay a gap
    idx, vals = figures.downsample_minmax(y, 100)
    assert len(idx) <= 100
    assert not np.isinf(vals).any()
    assert np.isnan(vals).any()
    with pytest.raises(ValueError):
        figures.downsample_minmax(y, 3)


def test_median_over_seeds_ignores_padding_and_needs_half_the_seeds():
    a = np.array([[1.0, 2.0, 3.0, 4.0],
                  [3.0, np.inf, 5.0, np.nan],
                  [2.0, 4.0, np.nan, np.nan],
                  [5.0, 1.0, np.nan, np.nan]])
    med = figures._median_over_seeds(a)
    np.testing.assert_allclose(med[:3], [2.5, 3.0, 4.0])
    assert np.isnan(med[3])  # one seed of four left: not a median worth drawing
    big = np.random.default_rng(0).random((7, 50))
    big[2, 20:] = np.nan
    med = figures._median_over_seeds(big.astype(np.float32))
    np.testing.assert_allclose(med, np.nanmedian(big, axis=0), rtol=1e-6)


def test_curves_with_diverged_rows_and_log_axis(tmp_path):
    a = loss_runs(seeds=3)
    a[1, 100] = np.inf
    a[1, 101:] = np.nan  # diverged, then padding
    a[2, 50] = -1.0  # not drawable on a log axis
    info = figures.curves(tmp_path / "sub" / "dir" / "c.png", {"lr 0.1": a, "lr 0.01": loss_runs(seed=5)},
                          logy=True, ylabel="loss", x=np.arange(300) * 10)
    c = info["conditions"]["lr 0.1"]
    assert c == {"seeds": 3, "steps": 300, "max_points": 300, "nonfinite": 200, "nonpositive": 1}
    assert info["path"].exists()
    d = figures._curve_lines(a, x=np.arange(300) * 10, logy=True)
    assert np.isnan(d["seeds"][2][1][50])
    assert d["median"][0][-1] == 2990
    assert np.all(np.isfinite(d["median"][1]))  # two of three seeds always have a value


def test_curves_single_seed_single_condition(tmp_path):
    info = figures.curves(tmp_path / "c.png", {"only": np.linspace(1, 0, 20)})
    assert info["conditions"]["only"]["seeds"] == 1


def test_curves_bounds_points_for_long_runs(tmp_path):
    steps = 100_000
    a = np.broadcast_to(np.exp(-np.arange(steps) / 3e4, dtype=np.float32), (200, steps)).copy()
    a[7, 12_345] = 50.0
    info = figures.curves(tmp_path / "big.png", {"big": a}, logy=True)
    assert info["conditions"]["big"]["max_points"] <= figures.MAX_POINTS
    d = figures._curve_lines(a[:8], logy=True)
    assert all(len(xs) <= figures.MAX_POINTS and len(xs) == len(ys) for xs, ys in d["seeds"])
    assert 12_345 in d["seeds"][7][0]


def test_scalar_by_condition_numeric_log_x(tmp_path):
    rng = np.random.default_rng(0)
    data = {s: rng.lognormal(np.log(-100 * np.log10(s)), 0.3, 12) for s in [1e-1, 1e-2, 1e-3, 1e-4]}
    data[1e-5] = np.r_[rng.lognormal(6, 0.3, 10), np.nan, np.inf]
    info = figures.scalar_by_condition(tmp_path / "s.png", data, numeric_x=True, logx=True,
                                       cis={1e-1: (1.0, 2.0)}, xlabel="init scale")
    assert info["skipped"] == 2
    c = info["conditions"]
    assert c[1e-5]["n"] == 10 and c[1e-5]["skipped"] == 2
    assert [v["x"] for v in c.values()] == [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
    assert c[1e-1]["ci"] == (1.0, 2.0)
    lo, hi = c[1e-3]["ci"]
    assert lo <= c[1e-3]["median"] <= hi
    again = figures.scalar_by_condition(tmp_path / "s2.png", data, numeric_x=True, logx=True,
                                        cis={1e-1: (1.0, 2.0)}, xlabel="init scale")
    assert again["conditions"][1e-3]["ci"] == (lo, hi)  # seeded bootstrap
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "s2.png").read_bytes()  # seeded jitter


def test_scalar_by_condition_categorical_and_log_y(tmp_path):
    info = figures.scalar_by_condition(tmp_path / "s.svg", {"adam": [0.1, 0.2, 0.0], "sgd": [0.3]},
                                       logy=True)
    assert info["conditions"]["adam"]["n"] == 2 and info["skipped"] == 1
    assert info["conditions"]["sgd"]["ci"] == (0.3, 0.3)
    with pytest.raises(ValueError, match="numeric"):
        figures.scalar_by_condition(tmp_path / "x.png", {"adam": [1.0]}, numeric_x=True)


def test_jitter_is_deterministic_and_bounded():
    j = figures._jitter(9, 0.25)
    np.testing.assert_array_equal(j, figures._jitter(9, 0.25))
    assert np.abs(j).max() == pytest.approx(0.25) and len(np.unique(j)) == 9


def test_small_multiples_ten_panels(tmp_path):
    panels = {f"seed {i + 1}": loss_runs(1, 5000, seed=i)[0] for i in range(9)}
    panels["train/val"] = loss_runs(2, 100)
    info = figures.small_multiples(tmp_path / "sm.png", panels, logy=True, ylabel="loss")
    assert info["grid"] == (2, 5) and info["panels"] == 10
    assert info["max_points"] <= figures.MAX_POINTS
    assert info["path"].stat().st_size > 0
    info = figures.small_multiples(tmp_path / "sm3.png", {"a": [1, 2], "b": [2, 1], "c": [1, 1]},
                                   ncols=2)
    assert info["grid"] == (2, 2)


def test_custom_calls_user_function_with_axes(tmp_path):
    from matplotlib.axes import Axes

    seen = {}

    def draw(ax, xs, *, label):
        seen["ax"], seen["label"] = ax, label
        ax.plot(xs, label=label)
        return "ok"

    info = figures.custom(tmp_path / "u.svg", draw, [1, 3, 2], label="mine")
    assert isinstance(seen["ax"], Axes) and seen["label"] == "mine"
    assert info["returned"] == "ok" and info["path"].exists()


def test_bad_suffix_and_failed_draw_leave_nothing(tmp_path):
    with pytest.raises(ExpostError, match=r"\.jpg"):
        figures.curves(tmp_path / "c.jpg", {"a": [1.0, 2.0]})

    def broken(ax):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        figures.custom(tmp_path / "u.png", broken)
    assert list(tmp_path.iterdir()) == []


def test_house_style_does_not_leak_into_global_rcparams(tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    figures.custom(tmp_path / "u.png", lambda ax: ax.plot([1, 2]))
    assert dict(matplotlib.rcParams) == before


def test_xlim_crops_before_downsampling_and_hlines_are_drawn(tmp_path):
    """A window of a long run is drawn at full resolution (a spike inside it is kept, at its true
    step), and a reference line changes the picture."""
    steps = 100_000
    a = np.broadcast_to(np.exp(-np.arange(steps) / 3e4, dtype=np.float32), (3, steps)).copy()
    a[1, 1_234] = 5.0
    info = figures.curves(tmp_path / "win.png", {"c": a}, xlim=(1_000, 1_500))
    assert info["conditions"]["c"]["steps"] == 501  # steps 1000..1500, not 100,000 squeezed
    assert info["conditions"]["c"]["max_points"] == 501
    plain = figures.curves(tmp_path / "plain.png", {"c": a[:, :2_000]})
    line = figures.curves(tmp_path / "line.png", {"c": a[:, :2_000]}, hlines=(0.5,))
    assert plain["path"].read_bytes() != line["path"].read_bytes()
    panels = figures.small_multiples(tmp_path / "p.png", {"s1": a[0], "s2": a[1]}, xlim=(1_200, 1_300),
                                     hlines=(1.0, 2.0))
    assert panels["max_points"] == 101
    dots = figures.scalar_by_condition(tmp_path / "s.png", {"a": [1.0, 2.0], "b": [3.0, 4.0]}, hlines=(2.5,))
    assert dots["path"].exists()


def s_curves(seeds=5, steps=3000, drop=150):
    rng = np.random.default_rng(3)
    t = np.arange(steps)
    return np.stack([1 / (1 + np.exp((t - drop - 20 * rng.random()) / 10)) + 1e-3 for _ in range(seeds)])


def test_curves_crop_the_x_axis_to_where_the_series_change(tmp_path):
    """An S-curve that drops by step ~200 of 3000 is shown up to shortly after it settles, not
    squeezed into the first 5% of the axis; a series still changing at the end is never cropped."""
    info = figures.curves(tmp_path / "c.png", {"a": s_curves(), "b": s_curves(drop=300)})
    shown = info["cropped"]
    assert shown is not None and 300 < shown < 700
    b = s_curves(drop=300)
    last_moving = max(np.flatnonzero(np.abs(row - row[-1]) > 0.01 * np.ptp(row))[-1] for row in b)
    assert shown > last_moving  # every step where a seed still moves is shown
    assert figures.curves(tmp_path / "d.png", {"a": loss_runs()})["cropped"] is None  # still falling
    assert figures.curves(tmp_path / "e.png", {"a": s_curves()}, xlim=(0, 3000))["cropped"] is None  # xlim wins
    # a seed that diverges late (NaN from step 2500) keeps the axis to where it stops
    late = s_curves()
    late[0, 2500:] = np.nan
    assert figures.active_steps({"a": late}) is None  # shown to step 2500 and beyond: nothing left to crop
    small = figures.small_multiples(tmp_path / "p.png", {f"seed {i}": row for i, row in enumerate(s_curves())})
    assert small["cropped"] is not None and small["cropped"] < 700


def test_coinciding_medians_are_dashed_and_told_apart(tmp_path):
    a = s_curves()
    info = figures.curves(tmp_path / "c.png", {"scalar": a, "vector": a * (1 + 1e-4), "other": a * 0.3})
    assert info["dashed"] == ["vector"]
    assert figures.coinciding({"scalar": a, "vector": a * (1 + 1e-4), "other": a * 0.3}) == [("scalar", "vector")]
    assert figures.coinciding({"x": a, "y": s_curves(drop=300)}) == []
