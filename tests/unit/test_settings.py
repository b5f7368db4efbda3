"""Where the Debian mirror for a debootstrapped base image comes from: configuration, then the host's own
apt sources (deb822 and one-line files in a temp dir laid out like /etc/apt), else a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushtrain import settings

MIRROR = "http://apt-mirror.internal.example/debian"


@pytest.fixture
def apt_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PUSHTRAIN_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_the_deb822_sources_name_the_mirror_and_not_the_security_archive(apt_dir: Path) -> None:
    (apt_dir / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# URIs: http://commented-out.example/debian\n"
        "URIs: http://apt-mirror.internal.example/debian-security\nSuites: bookworm-security\n\n"
        f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )

    assert settings.debian_mirror(apt_dir) == MIRROR


def test_a_one_line_sources_list_names_the_mirror(apt_dir: Path) -> None:
    (apt_dir / "sources.list").write_text(
        "# deb http://commented-out.example/debian bookworm main\n"
        f"deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] {MIRROR} bookworm main\n"
    )

    assert settings.debian_mirror(apt_dir) == MIRROR


def test_the_setting_wins_over_the_host_sources(apt_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (apt_dir / "sources.list").write_text(f"deb {MIRROR} bookworm main\n")
    monkeypatch.setenv("PUSHTRAIN_DEBIAN_MIRROR", "http://proxy.internal.example:3142/debian")

    assert settings.debian_mirror(apt_dir) == "http://proxy.internal.example:3142/debian"


def test_without_a_debian_mirror_anywhere_it_asks_for_the_setting(apt_dir: Path) -> None:
    # A host of another distribution: apt sources, but no Debian mirror among them.
    (apt_dir / "sources.list").write_text("deb http://archive.internal.example/ubuntu noble main\n")

    with pytest.raises(settings.MissingSettingError, match="set PUSHTRAIN_DEBIAN_MIRROR"):
        settings.debian_mirror(apt_dir)
