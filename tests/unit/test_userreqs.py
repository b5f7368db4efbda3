"""The strict reading of a repository's requirements.txt and its check against the image's own packages."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pushtrain import settings
from pushtrain.userreqs import (
    ImageFacts,
    UserRequirementsError,
    Wheelhouse,
    check_size,
    parse_requirements,
    read_requirements,
    requirements_to_add,
    wheelhouse_key,
)

SKLEARN_IMAGE = ImageFacts(
    image="sklearn",
    python="3.11",
    python_full="3.11.2",
    machine="x86_64",
    glibc=(2, 36),
    packages={"numpy": "2.4.6", "scikit-learn": "1.9.1", "pandas": "3.1.1", "pip": "23.0.1"},
)
TENSORFLOW_IMAGE = ImageFacts(
    image="tensorflow",
    python="3.11",
    python_full="3.11.2",
    machine="x86_64",
    glibc=(2, 36),
    packages={"numpy": "2.4.6", "tensorflow-cpu": "2.21.0", "keras": "3.15.1"},
)


def names(requirements) -> list[str]:
    return [item.for_pip() for item in requirements]


def test_plain_requirements_with_comments_blank_lines_extras_and_markers():
    declared = parse_requirements(
        "# what the model needs\n"
        "\n"
        "tabulate==0.9.0  # pretty tables\n"
        "Python_Dateutil >= 2.8\n"
        "rich[jupyter]\n"
        'colorama; sys_platform == "win32"\n'
    )
    assert [(item.line_number, item.name) for item in declared] == [
        (3, "tabulate"),
        (4, "python-dateutil"),
        (5, "rich"),
        (6, "colorama"),
    ]
    assert names(declared) == ["tabulate==0.9.0", "python-dateutil>=2.8", "rich[jupyter]", "colorama"]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("-e .", "editable install"),
        ("--editable=git+https://example.invalid/x.git", "editable install"),
        ("-r more.txt", "includes another file"),
        ("--constraint c.txt", "includes another file"),
        ("--index-url https://example.invalid/simple", "package index; remove the line"),
        ("--extra-index-url=https://example.invalid/simple", "package index; remove the line"),
        ("-f ./wheels", "package index; remove the line"),
        ("--prefer-binary", "pip options are not supported"),
        ("git+https://example.invalid/tabulate.git", "a URL"),
        ("https://example.invalid/tabulate-0.9.0-py3-none-any.whl", "a URL"),
        ("tabulate @ https://example.invalid/tabulate.zip", "a URL"),
        ("./vendor/tabulate", "a local path"),
        ("/opt/tabulate", "a local path"),
        ("tabulate-0.9.0-py3-none-any.whl", "a local path"),
        ("tabulate==0.9.0 --hash=sha256:0123", "per-requirement options"),
        ("tabulate==0.9.0 \\", "continuation lines"),
        ("tabulate 0.9.0", "not a requirement"),
    ],
)
def test_refused_lines_name_the_line_and_the_fix(line, says):
    with pytest.raises(UserRequirementsError) as raised:
        parse_requirements(f"numpy\n{line}\n")
    message = str(raised.value)
    assert message.startswith(f"requirements.txt, line 2 ({line!r}): ")
    assert says in message


def test_a_package_named_twice_is_refused_with_both_lines():
    with pytest.raises(UserRequirementsError, match=r"line 3 .*Tabulate is named on line 1 too: merge"):
        parse_requirements("tabulate>=0.8\nrich\nTabulate<0.10\n")


def test_conflicting_pin_is_refused_with_the_images_version():
    declared = parse_requirements("tabulate\nnumpy==1.26.4\n")
    with pytest.raises(UserRequirementsError) as raised:
        requirements_to_add(declared, SKLEARN_IMAGE)
    message = str(raised.value)
    assert "line 2 ('numpy==1.26.4')" in message
    assert "sklearn image has numpy==2.4.6 built in" in message
    assert "allow 2.4.6" in message


def test_requirements_the_image_satisfies_are_no_ops():
    declared = parse_requirements("numpy>=2\nscikit-learn\npandas==3.1.1\ntabulate\n")
    assert names(requirements_to_add(declared, SKLEARN_IMAGE)) == ["tabulate"]


def test_extras_of_an_installed_package_are_kept_for_their_dependencies():
    declared = parse_requirements("pandas[excel]>=3\n")
    assert names(requirements_to_add(declared, SKLEARN_IMAGE)) == ["pandas[excel]>=3"]


def test_tensorflow_is_checked_against_the_cpu_build_the_image_has():
    assert requirements_to_add(parse_requirements("tensorflow>=2.15\n"), TENSORFLOW_IMAGE) == []
    with pytest.raises(UserRequirementsError, match=r"tensorflow-cpu==2\.21\.0 built in \(provided there by"):
        requirements_to_add(parse_requirements("tensorflow==2.15.0\n"), TENSORFLOW_IMAGE)
    with pytest.raises(UserRequirementsError, match="extras of it cannot be added"):
        requirements_to_add(parse_requirements("tensorflow[and-cuda]\n"), TENSORFLOW_IMAGE)


def test_markers_are_evaluated_for_the_image_not_the_host():
    declared = parse_requirements(
        'tomli; python_version < "3.11"\n'
        'exceptiongroup; python_version >= "3.11"\n'
        'pywin32; sys_platform == "win32"\n'
        'numpy==1.26.4; python_version < "3.10"\n'
    )
    assert names(requirements_to_add(declared, SKLEARN_IMAGE)) == ["exceptiongroup"]
    older_python = replace(SKLEARN_IMAGE, python="3.10", python_full="3.10.12")
    assert names(requirements_to_add(declared[:2], older_python)) == ["tomli"]


def test_platform_tags_follow_the_images_glibc_and_architecture():
    tags = SKLEARN_IMAGE.platform_tags()
    assert tags[0] == "manylinux_2_36_x86_64"
    assert {
        "manylinux_2_28_x86_64",
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux1_x86_64",
    } <= set(tags)
    arm_old_glibc = replace(SKLEARN_IMAGE, machine="aarch64", glibc=(2, 17))
    assert arm_old_glibc.platform_tags()[:2] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert not any("2_28" in tag for tag in arm_old_glibc.platform_tags())


def test_wheelhouse_key_changes_with_the_requirements_and_the_images_packages():
    tabulate = requirements_to_add(parse_requirements("tabulate\n"), SKLEARN_IMAGE)
    same = requirements_to_add(parse_requirements("# tables\nTabulate  # again\nnumpy>=2\n"), SKLEARN_IMAGE)
    pinned = requirements_to_add(parse_requirements("tabulate==0.9.0\n"), SKLEARN_IMAGE)
    newer_image = replace(SKLEARN_IMAGE, packages={**SKLEARN_IMAGE.packages, "numpy": "2.5.0"})
    key = wheelhouse_key(tabulate, SKLEARN_IMAGE)
    assert wheelhouse_key(same, SKLEARN_IMAGE) == key
    assert wheelhouse_key(pinned, SKLEARN_IMAGE) != key
    assert wheelhouse_key(tabulate, newer_image) != key


def test_size_cap_refuses_and_names_the_largest_wheels(tmp_path, monkeypatch):
    wheelhouse = Wheelhouse(
        tmp_path,
        {"big": "1.0", "small": "2.0"},
        {"big-1.0-py3-none-any.whl": 700_000_000, "small-2.0-py3-none-any.whl": 1_000},
    )
    monkeypatch.setenv("PUSHTRAIN_USER_REQUIREMENTS_MAX_MB", "500")
    with pytest.raises(UserRequirementsError) as raised:
        check_size(wheelhouse, settings.user_requirements_max_mb())
    message = str(raised.value)
    assert "700.0 MB of wheels, over the cap of 500 MB" in message
    assert message.index("big-1.0") < message.index("small-2.0")
    assert "PUSHTRAIN_USER_REQUIREMENTS_MAX_MB" in message
    check_size(wheelhouse, 701)  # under the cap: no error


def test_the_declaration_is_the_requirements_file_beside_the_model_file(tmp_path):
    model = tmp_path / "src" / "model.py"
    model.parent.mkdir()
    model.write_text("HPARAMS = {}\n")
    (tmp_path / "requirements.txt").write_text("tabulate\n")  # at the root: not the model's folder
    assert read_requirements(model) == []
    (model.parent / "requirements.txt").write_text("tabulate==0.9.0\n")
    assert names(read_requirements(model)) == ["tabulate==0.9.0"]


def test_a_symlinked_or_binary_requirements_file_is_refused_unread(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("password=hunter2\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").symlink_to(secret)
    with pytest.raises(UserRequirementsError, match="symbolic link") as raised:
        read_requirements(repo / "model.py")
    assert "hunter2" not in str(raised.value)
    (repo / "requirements.txt").unlink()
    (repo / "requirements.txt").write_bytes(b"tabulate\n\xff\xfe\n")
    with pytest.raises(UserRequirementsError, match="not UTF-8"):
        read_requirements(repo / "model.py")
