"""The README is the front door: its commands and configuration table must stay true."""

from __future__ import annotations

import re

from support.infra import ROOT

from reelhouse.api.settings import ApiSettings
from reelhouse.common.settings import env_names
from reelhouse.ingest.settings import IngestSettings
from reelhouse.janitor.settings import JanitorSettings
from reelhouse.prober.settings import ProberSettings
from reelhouse.recorder.settings import RecorderSettings
from reelhouse.restreamer.settings import RestreamerSettings

README = (ROOT / "README.md").read_text()


def test_readme_gives_the_two_commands_and_ci_runs_one_of_them():
    assert "make up" in README
    assert "make test" in README
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_configuration_table_lists_every_setting_and_nothing_else():
    documented = set(re.findall(r"^\| `(REELHOUSE_[A-Z_]+)` \|", README, flags=re.M))
    real = set()
    for cls in (ApiSettings, RecorderSettings, RestreamerSettings, ProberSettings, JanitorSettings,
                IngestSettings):  # fmt: skip
        real |= env_names(cls)
    assert documented == real


def test_readme_names_everything_make_up_installs():
    """Each thing scripts/bootstrap.sh installs or builds is named where the README says so."""
    bootstrap = (ROOT / "scripts/bootstrap.sh").read_text()
    section = README[README.index("## The two commands") : README.index("API documentation")]
    apt = re.findall(r"missing\+=\((\w+)\)", bootstrap)
    builds = re.findall(r"^\s*build_go ([\w-]+) ", bootstrap, flags=re.M)
    assert apt == ["ffmpeg", "chromium", "postgresql"]
    assert builds == ["nats-server", "reelhouse-ingest", "versitygw", "ferretdb-lite"]
    uv_version = re.search(r'^UV_VERSION="([\d.]+)"', bootstrap, flags=re.M)[1]
    tools = ["nats-server", "reelhouse-ingest", "FerretDB", "versitygw", f"`uv` {uv_version}"]
    for name in [*apt, *tools, "uv sync --locked"]:
        assert name in section, name
    assert re.search(r"first run takes about \d+ minutes", section)
