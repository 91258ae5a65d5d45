"""PROFILES: a shrunk setting beside the paper's defaults, chosen by --profile, a post's front
matter or expost.toml; cache keys follow the resolved config; the manifest and the post say it."""

import json

from expost import Workspace

PROFILES = 'PROFILES = {"cpu": {"steps": 5}, "slow": {"rate": 0.25, "steps": 40}}\n'


def with_profiles(ws):
    path = ws / "experiments" / "toy.py"
    path.write_text(path.read_text().replace("SEEDS = 5\n", "SEEDS = 5\n" + PROFILES, 1))


def configs(ws, **sel):
    w = Workspace(ws)
    _, plans = w.plan(("toy",), w.selection(**sel))
    return {(r.cfg["rate"], r.cfg["steps"]) for r in plans["toy"]}, {r.key for r in plans["toy"]}


def test_profile_replaces_defaults_under_the_sweep_and_set_still_wins(ws):
    with_profiles(ws)
    assert configs(ws)[0] == {(0.5, 20), (1.0, 20)}
    assert configs(ws, profile="cpu")[0] == {(0.5, 5), (1.0, 5)}
    # a profile value for a swept parameter is a default: the sweep still varies it
    assert configs(ws, profile="slow")[0] == {(0.5, 40), (1.0, 40)}
    assert configs(ws, profile="cpu", set={"steps": 7})[0] == {(0.5, 7), (1.0, 7)}


def test_cache_keys_follow_the_resolved_config(ws, expost):
    with_profiles(ws)
    assert configs(ws, profile="cpu")[1] == configs(ws, set={"steps": 5})[1]
    assert configs(ws, profile="cpu")[1].isdisjoint(configs(ws)[1])
    r = expost("run", "toy", "--profile", "cpu", "-j", "1")
    assert r.exit_code == 0 and len(r.ran) == 10
    r = expost("run", "toy", "--set", "steps=5", "-j", "1")  # the same configs: nothing runs again
    assert r.exit_code == 0 and r.ran == []


def test_unknown_or_bad_profiles_are_clear_errors(ws, expost):
    with_profiles(ws)
    r = expost("run", "toy", "--profile", "gpu")
    assert r.exit_code == 1
    assert "profile 'gpu': toy has no such profile (its PROFILES: cpu, slow)" in r.output
    r = expost("run", "other", "--profile", "cpu")  # other.py defines no PROFILES at all
    assert r.exit_code == 1 and "other has no such profile (its PROFILES: none)" in r.output
    path = ws / "experiments" / "toy.py"
    for bad, message in (('{"cpu": {"stepz": 5}}', "PROFILES['cpu']['stepz']: is not a parameter"),
                         ('{"cpu": {"steps": 0.5}}', "PROFILES['cpu']['steps']: 0.5 is a float, but the default 20"),
                         ('{"cpu": {}}', "PROFILES['cpu']: must be a non-empty dict"),
                         ('["cpu"]', "PROFILES: must be a dict")):
        text = path.read_text()
        start = text.index("PROFILES = ")
        path.write_text(text[:start] + f"PROFILES = {bad}\n" + text[text.index("\n", start) + 1:])
        r = expost("run", "toy")
        assert r.exit_code == 1 and message in r.output, (bad, r.output)


POST = """---
title: Toy
summary: Under a profile.
experiments: [toy]
profile: cpu
---
Final: {{ stat(results("toy", rate=0.5), "final") }}.
"""


def test_front_matter_profile_is_in_the_post_and_manifest(ws, expost):
    with_profiles(ws)
    (ws / "templates" / "toy.md.j2").write_text(POST)
    r = expost("build", "toy", "-j", "1")
    assert r.exit_code == 0, r.output
    manifest = json.loads((ws / "publish" / "toy" / "manifest.json").read_text())
    assert manifest["experiments"]["toy"]["profile"] == {"name": "cpu", "values": {"steps": 5}}
    assert {c["steps"] for c in manifest["experiments"]["toy"]["configs"]} == {5}
    assert "toy: 5 seeds (1–5), profile cpu (steps=5)" in (ws / "publish" / "toy" / "post.md").read_text()
    assert manifest["command"] == "expost build toy"  # the front matter is part of the post
    r = expost("build", "toy", "--profile", "slow", "-j", "1")  # the command line wins, and says so
    assert r.exit_code == 0, r.output
    manifest = json.loads((ws / "publish" / "toy" / "manifest.json").read_text())
    assert manifest["command"] == "expost build toy --profile slow"
    assert manifest["experiments"]["toy"]["profile"]["name"] == "slow"


def test_expost_toml_profile_applies_where_an_experiment_defines_it(ws, expost):
    with_profiles(ws)
    (ws / "expost.toml").write_text('profile = "cpu"\n')
    toy, _ = configs(ws)
    assert toy == {(0.5, 5), (1.0, 5)}
    w = Workspace(ws)
    _, plans = w.plan(("other",), w.selection())  # other.py has no PROFILES: its defaults
    assert {r.cfg["steps"] for r in plans["other"]} == {20}
    (ws / "expost.toml").write_text("profile = 3\n")
    r = expost("run", "toy")
    assert r.exit_code == 1 and "expost.toml: profile = 3 is not a profile name" in r.output
