"""Settings: environment, then flags; every bad value is one SettingsError naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.research import lookahead_for
from orchestrator.settings import ENV, SettingsError, load
from tests.conftest import clean_env

NUMERIC_ENV = {
    "AUTORESEARCH_LLM_TEMPERATURE": "llm_temperature",
    "AUTORESEARCH_LLM_TIMEOUT_S": "llm_timeout_s",
    "AUTORESEARCH_LLM_PRICE_IN": "llm_price_in",
    "AUTORESEARCH_LLM_PRICE_OUT": "llm_price_out",
    "AUTORESEARCH_MAX_EXPERIMENTS": "max_experiments",
    "AUTORESEARCH_MAX_HOURS": "max_hours",
    "AUTORESEARCH_MIN_DELTA": "min_delta",
    "AUTORESEARCH_SEED": "seed",
    "AUTORESEARCH_LOCAL_WORKERS": "local_workers",
    "AUTORESEARCH_GPU": "gpu",
    "AUTORESEARCH_TRAIN_WALL_S": "train_wall_s",
    "AUTORESEARCH_EVAL_WALL_S": "eval_wall_s",
    "AUTORESEARCH_MEMORY_GB": "memory_gb",
    "AUTORESEARCH_NOISE_RUNS": "noise_runs",
    "AUTORESEARCH_NOISE_EVERY": "noise_every",
    "AUTORESEARCH_NOISE_Z": "noise_z",
    "AUTORESEARCH_LOOKAHEAD": "lookahead",
    "AUTORESEARCH_MAX_IN_FLIGHT": "max_in_flight",
    "AUTORESEARCH_LLM_CONCURRENCY": "llm_concurrency",
    "AUTORESEARCH_LLM_RATE_PER_MIN": "llm_rate_per_min",
}
FLOAT_ENV = [
    "AUTORESEARCH_MAX_HOURS",
    "AUTORESEARCH_MIN_DELTA",
    "AUTORESEARCH_TRAIN_WALL_S",
    "AUTORESEARCH_EVAL_WALL_S",
    "AUTORESEARCH_MEMORY_GB",
    "AUTORESEARCH_LLM_TIMEOUT_S",
    "AUTORESEARCH_LLM_TEMPERATURE",
    "AUTORESEARCH_LLM_PRICE_IN",
    "AUTORESEARCH_LLM_PRICE_OUT",
    "AUTORESEARCH_NOISE_Z",
    "AUTORESEARCH_LLM_RATE_PER_MIN",
]


def test_numeric_table_covers_every_numeric_setting():
    numeric = {
        var
        for field, (names, _parse) in ENV.items()
        for var in names
        if field in NUMERIC_ENV.values()
    }
    assert numeric == set(NUMERIC_ENV)


def test_empty_env_gives_defaults():
    s = load(env={})
    assert s.tag is None and s.redis_url is None and s.max_hours is None
    assert s.profile == "auto" and s.proposer == "auto" and s.seed == 0


def test_numeric_values_are_parsed():
    s = load(
        env={
            "AUTORESEARCH_MAX_HOURS": "2.5",
            "AUTORESEARCH_MAX_EXPERIMENTS": "40",
            "AUTORESEARCH_SEED": "7",
            "AUTORESEARCH_TRAIN_WALL_S": "60",
            "AUTORESEARCH_GPU": "1",
        }
    )
    assert (s.max_hours, s.max_experiments, s.seed, s.train_wall_s, s.gpu) == (2.5, 40, 7, 60, 1)
    assert type(s.max_experiments) is int and type(s.max_hours) is float


@pytest.mark.parametrize("var", sorted(NUMERIC_ENV))
@pytest.mark.parametrize("raw", ["abc", "1,5", "ten"])
def test_non_number_names_the_env_variable(var, raw):
    with pytest.raises(SettingsError) as info:
        load(env={var: raw})
    message = str(info.value)
    assert message.startswith(f"{var}=")
    assert repr(raw) in message and "not a number" in message
    assert "\n" not in message


@pytest.mark.parametrize("var", ["AUTORESEARCH_MAX_EXPERIMENTS", "AUTORESEARCH_SEED"])
def test_integer_settings_reject_fractions(var):
    with pytest.raises(SettingsError, match=f"^{var}='1.5': not a number$"):
        load(env={var: "1.5"})


@pytest.mark.parametrize("var", FLOAT_ENV)
def test_nan_is_not_a_number(var):
    """float() accepts 'nan', and every range check is False for it, so NaN slips through:
    max_hours=nan never stops, min_delta=nan never keeps, a wall of nan never fires."""
    with pytest.raises(SettingsError, match=f"^({var}|{NUMERIC_ENV[var]})="):
        load(env={var: "nan"})


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("max_hours", -1.0, "must be positive"),
        ("max_hours", 0.0, "must be positive"),
        ("train_wall_s", 0.0, "must be positive"),
        ("train_wall_s", 2.0, "at least 5 seconds"),
        ("eval_wall_s", -3.0, "must be positive"),
        ("memory_gb", 0.0, "must be positive"),
        ("llm_timeout_s", 0.0, "must be positive"),
        ("max_experiments", -1, "0 or more"),
        ("local_workers", -2, "0 or more"),
        ("min_delta", -0.01, "0 or more"),
        ("gpu", -1, "0 or more"),
        ("llm_temperature", 2.5, "between 0 and 2"),
        ("noise_runs", 0, "1 or more"),
        ("noise_every", 0, "1 or more"),
        ("noise_z", -1.0, "0 or more"),
        ("lookahead", -1, "0 or more"),
        ("max_in_flight", 0, "1 or more"),
        ("llm_concurrency", 0, "1 or more"),
        ("llm_rate_per_min", 0.0, "must be positive"),
    ],
)
def test_bounds_name_the_setting(field, value, why):
    with pytest.raises(SettingsError) as info:
        load(env={}, overrides={field: value})
    assert str(info.value).startswith(f"{field}={value!r}: ")
    assert why in str(info.value)


def test_bounds_apply_to_env_values_too():
    with pytest.raises(SettingsError, match=r"^max_hours=-1\.0: must be positive$"):
        load(env={"AUTORESEARCH_MAX_HOURS": "-1"})
    with pytest.raises(SettingsError, match=r"^local_workers=-1: must be 0 or more$"):
        load(env={"AUTORESEARCH_LOCAL_WORKERS": "-1"})


def test_zero_is_fine_where_zero_means_none():
    s = load(env={"AUTORESEARCH_MAX_EXPERIMENTS": "0", "AUTORESEARCH_LOCAL_WORKERS": "0"})
    assert (s.max_experiments, s.local_workers) == (0, 0)
    assert load(env={"AUTORESEARCH_MIN_DELTA": "0"}).min_delta == 0.0


def test_noise_and_scheduling_settings_from_env():
    s = load(
        env={
            "AUTORESEARCH_NOISE_RUNS": "5",
            "AUTORESEARCH_NOISE_Z": "2.5",
            "AUTORESEARCH_CONFIRM": "off",
            "AUTORESEARCH_LOOKAHEAD": "0",
            "AUTORESEARCH_LLM_CONCURRENCY": "32",
            "AUTORESEARCH_SEQUENTIAL": "yes",
        }
    )
    assert (s.noise_runs, s.noise_z, s.confirm, s.lookahead) == (5, 2.5, False, 0)
    assert (s.llm_concurrency, s.sequential) == (32, True)
    with pytest.raises(SettingsError, match="^AUTORESEARCH_CONFIRM='maybe': must be true or false"):
        load(env={"AUTORESEARCH_CONFIRM": "maybe"})


def test_lookahead_is_auto_by_default_and_scales_with_the_workers():
    assert load(env={}).lookahead == "auto"
    assert load(env={"AUTORESEARCH_LOOKAHEAD": "auto"}).lookahead == "auto"
    assert load(env={"AUTORESEARCH_LOOKAHEAD": "8"}, overrides={"lookahead": "auto"}).lookahead == (
        "auto"
    )
    with pytest.raises(SettingsError, match="^AUTORESEARCH_LOOKAHEAD='-2': must be 0 or more"):
        load(env={"AUTORESEARCH_LOOKAHEAD": "-2"})
    # auto: one job per 4 live workers, at least one; a number is used as given
    assert [lookahead_for(w, None) for w in (1, 4, 5, 16, 64)] == [1, 1, 2, 4, 16]
    assert [lookahead_for(w, 0) for w in (1, 64)] == [0, 0]


@pytest.mark.parametrize("tag", ["a/b", "../x", ".hidden", "-x", "has space", "x" * 65, "ü"])
def test_bad_tag_rejected(tag):
    with pytest.raises(SettingsError, match="^tag="):
        load(env={"AUTORESEARCH_TAG": tag})
    with pytest.raises(SettingsError, match="^tag="):
        load(env={}, overrides={"tag": tag})


def test_tag_with_trailing_newline_rejected():
    """`$` in TAG_RE also matches before a final newline, so 'run1\\n' passes as a tag."""
    with pytest.raises(SettingsError, match="^tag="):
        load(env={"AUTORESEARCH_TAG": "run1\n"})


@pytest.mark.parametrize("tag", ["nov28", "a", "run_2-b", "X" * 64])
def test_good_tags(tag):
    assert load(env={"AUTORESEARCH_TAG": tag}).tag == tag


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("AUTORESEARCH_PROFILE", "tpu"),
        ("AUTORESEARCH_PROPOSER", "gpt"),
        ("AUTORESEARCH_RUNNER", "docker-ish"),
    ],
)
def test_bad_choice_names_the_env_variable(var, raw):
    with pytest.raises(SettingsError, match=f"^{var}='{raw}': must be one of "):
        load(env={var: raw})


def test_bad_profile_flag_rejected():
    with pytest.raises(SettingsError, match="^profile='tpu': "):
        load(env={}, overrides={"profile": "tpu"})


def test_bad_proposer_flag_rejected():
    """check() validates a profile given as an override but not a proposer (or runner)."""
    with pytest.raises(SettingsError, match="proposer"):
        load(env={}, overrides={"proposer": "gpt"})


def test_good_choices():
    s = load(env={"AUTORESEARCH_PROFILE": "cpu", "AUTORESEARCH_PROPOSER": "mutate"})
    assert (s.profile, s.proposer) == ("cpu", "mutate")
    assert s.resolved_profile() == ("cpu", "set")
    assert s.resolved_proposer() == ("mutate", "set")


@pytest.mark.parametrize("url", ["localhost:6379", "http://127.0.0.1:6379", "127.0.0.1"])
def test_redis_url_needs_a_scheme(url):
    with pytest.raises(SettingsError, match="^redis_url=.*redis://"):
        load(env={"REDIS_URL": url})


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380/1", "unix:///tmp/r.sock"])
def test_redis_url_accepted(url):
    assert load(env={"REDIS_URL": url}).redis_url == url


def test_flags_win_over_env():
    env = {
        "AUTORESEARCH_MAX_HOURS": "8",
        "AUTORESEARCH_TAG": "fromenv",
        "AUTORESEARCH_SEED": "1",
        "REDIS_URL": "redis://env:6379/0",
    }
    s = load(env=env, overrides={"max_hours": 0.5, "tag": "fromflag", "seed": None})
    assert s.max_hours == 0.5 and s.tag == "fromflag"
    assert s.seed == 1  # None means the flag was not given
    assert s.redis_url == "redis://env:6379/0"
    # The flag's value is the one checked: a bad env bound is overridden by a good flag.
    s = load(env={"AUTORESEARCH_MAX_HOURS": "-3"}, overrides={"max_hours": 1.0})
    assert s.max_hours == 1.0


def test_first_env_name_wins():
    s = load(env={"AUTORESEARCH_LLM_MODEL": "mine", "OPENAI_MODEL": "theirs"})
    assert s.llm_model == "mine"
    assert load(env={"OPENAI_MODEL": "theirs"}).llm_model == "theirs"


def test_openai_key_selects_the_llm_proposer():
    name, why = load(env={"OPENAI_API_KEY": "sk-test"}).resolved_proposer()
    assert name == "llm" and why
    assert load(env={"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}).resolved_proposer()[0] == (
        "llm"
    )


def test_no_llm_configured_selects_mutate_with_a_reason():
    name, why = load(env={}).resolved_proposer()
    assert name == "mutate"
    assert "OPENAI_API_KEY" in why
    # An explicit choice beats the key.
    s = load(env={"OPENAI_API_KEY": "sk-test", "AUTORESEARCH_PROPOSER": "mutate"})
    assert s.resolved_proposer() == ("mutate", "set")


# --- the CLI: exit code 2 and one line on stderr ---


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    return clean_env(HOME=str(home), **extra)


def run_cli(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "extra", "needle"),
    [
        (["run", "--max-hours", "-1"], {}, "max_hours=-1.0: must be positive"),
        (["run"], {"AUTORESEARCH_MAX_EXPERIMENTS": "x"}, "AUTORESEARCH_MAX_EXPERIMENTS='x'"),
        (["run", "--tag", "../x"], {}, "tag='../x'"),
    ],
)
def test_cli_bad_setting_exits_2_with_one_line(repo, tmp_path, args, extra, needle):
    home = tmp_path / "home"
    home.mkdir()
    proc = run_cli(repo, cli_env(home, **extra), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("autoresearch: error: ")
    assert needle in lines[0]
    assert proc.stdout == ""
    # Nothing was started: no branch, no run folder.
    assert not (repo / "workspace" / "runs").exists()
