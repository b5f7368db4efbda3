"""Importing users' image data sets: versions, shapes, splits, archives and repository folders, on real files.

Every bad input is tried against a store that already holds a good version of the same name: the import
must fail with a message naming the file, and leave that version exactly as it was.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pushtrain import datasets
from pushtrain.__main__ import main as cli
from pushtrain.datasets import DatasetError, ImportOptions
from pushtrain.runner.data import folder_sha256, load_data

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def save(
    path: Path,
    size: tuple[int, int] = (12, 10),
    colour=(128, 128, 128),
    mode: str = "RGB",
    fmt: str | None = None,
    seed: int = 0,
) -> Path:
    """An image of ``size`` (width, height): the colour plus a little seeded noise, so files differ."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def colour_folder(root: Path, per_class: int = 6, size=(12, 10)) -> Path:
    for label, colour in COLOURS.items():
        for i in range(per_class):
            save(root / label / f"{i}.png", size, colour, seed=hash((label, i)) % 1000)
    return root


def snapshot(version_root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(version_root)): p.read_bytes()
        for p in sorted(version_root.rglob("*"))
        if p.is_file()
    }


def test_a_folder_becomes_v1_with_a_manifest_the_runner_agrees_with(tmp_path):
    source = colour_folder(tmp_path / "colours", per_class=10)
    (source / "NOTES.txt").write_text("shot on a phone")
    result = datasets.add_path("colours", source)
    manifest = result.manifest
    assert result.created and manifest.version == 1 and manifest.split_version == "v1"
    assert manifest.kind == "images" and manifest.image_shape == [10, 12, 3]
    assert manifest.class_names == ["blue", "green", "red"]
    assert manifest.counts == {"train": 24, "test": 6}
    assert manifest.class_counts["test"] == {"blue": 2, "green": 2, "red": 2}
    assert manifest.split == {
        "method": "stratified per class",
        "premade": False,
        "seed": datasets.SPLIT_SEED,
        "test_fraction": 0.2,
    }
    assert manifest.source["type"] == "path" and manifest.source["sha256"] == manifest.source_sha256
    assert manifest.ignored == [["NOTES.txt", "not an image (by its suffix)"]]
    assert manifest.images["copied"] == 30 and manifest.images["resized"] == 0
    # The hashes are what the runner computes over what it reads.
    assert folder_sha256(manifest.train_dir) == manifest.train_sha256
    assert folder_sha256(manifest.test_dir) == manifest.test_sha256
    train = load_data(manifest.train_dir)
    assert train.images.shape == (24, 10, 12, 3) and train.class_names == manifest.class_names
    held_out = {str(p.relative_to(manifest.test_dir)) for p in manifest.test_dir.rglob("*.png")}
    assert held_out and not held_out & {
        str(p.relative_to(manifest.train_dir)) for p in manifest.train_dir.rglob("*.png")
    }


def test_same_content_is_a_no_op_and_one_changed_byte_is_the_next_version(tmp_path, capsys):
    source = tmp_path / "bmp"
    for label, colour in COLOURS.items():
        for i in range(5):
            save(
                source / label / f"{i}.bmp", colour=colour, seed=i, fmt="BMP"
            )  # uncompressed: a byte is a pixel
    first = datasets.add_path("shades", source)
    before = snapshot(first.manifest.train_dir.parent)
    again = datasets.add_path("shades", source)
    assert not again.created and again.manifest.version == 1
    assert "unchanged, still v1" in capsys.readouterr().out

    target = source / "red" / "3.bmp"
    content = bytearray(target.read_bytes())
    content[-1] ^= 0x01  # the last pixel's last byte
    target.write_bytes(bytes(content))
    changed = datasets.add_path("shades", source)
    assert changed.created and changed.manifest.version == 2
    assert changed.manifest.source_sha256 != first.manifest.source_sha256
    assert snapshot(first.manifest.train_dir.parent) == before  # v1 is never rewritten
    assert datasets.load_manifest("shades").version == 2 and datasets.versions("shades") == [1, 2]


def test_other_options_make_a_new_version_of_the_same_content(tmp_path):
    source = colour_folder(tmp_path / "c")
    assert datasets.add_path("c", source).manifest.version == 1
    second = datasets.add_path("c", source, ImportOptions(test_fraction=0.5))
    assert second.created and second.manifest.counts == {"train": 9, "test": 9}


def test_mixed_sizes_and_modes_become_the_most_common_shape_and_are_recorded(tmp_path):
    source = tmp_path / "mixed"
    for label, colour in COLOURS.items():
        for i in range(4):
            save(source / label / f"{i}.png", (16, 12), colour, seed=i)
        save(source / label / "big.jpg", (40, 30), colour, fmt="JPEG")
        save(source / label / "grey.png", (16, 12), colour, mode="L")
        save(source / label / "alpha.png", (16, 12), colour, mode="RGBA")
    manifest = datasets.add_path("mixed", source).manifest
    assert manifest.image_shape == [12, 16, 3]
    assert manifest.images["resized"] == 3 and manifest.images["resized_from"] == {"30x40": 3}
    assert manifest.images["converted"] == 9 and manifest.images["copied"] == 12
    for split in (manifest.train_dir, manifest.test_dir):
        for path in split.rglob("*.png"):
            with Image.open(path) as image:
                assert (image.mode, image.size) == ("RGB", (16, 12)), path


def test_options_fix_size_and_channels(tmp_path):
    source = colour_folder(tmp_path / "c", size=(20, 20))
    manifest = datasets.add_path("small-grey", source, ImportOptions(image_size=(8, 6), channels=1)).manifest
    assert manifest.image_shape == [8, 6, 1] and manifest.images["shape_from"] == "options"
    assert manifest.images["resized"] == 18
    assert load_data(manifest.test_dir).images.shape == (3, 8, 6, 1)  # one of 6 per class (6 x 0.2, rounded)


def test_a_split_of_the_users_own_is_kept_and_recorded(tmp_path):
    source = tmp_path / "premade"
    for split, count in (("train", 5), ("test", 2)):
        for label, colour in COLOURS.items():
            for i in range(count):
                save(source / split / label / f"{split}{i}.png", colour=colour, seed=i)
    manifest = datasets.add_path("premade", source).manifest
    assert manifest.split["premade"] is True and manifest.split["seed"] is None
    assert manifest.counts == {"train": 15, "test": 6}
    assert sorted(p.name for p in (manifest.test_dir / "red").iterdir()) == ["test0.png", "test1.png"]


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_an_archive_with_a_top_folder_is_the_same_data_as_the_folder(tmp_path, suffix):
    source = colour_folder(tmp_path / "pets")
    folder_version = datasets.add_path("pets", source).manifest
    archive = tmp_path / f"pets{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(source.rglob("*.png")):
                bundle.write(path, f"pets/{path.relative_to(source)}")
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            bundle.add(source, arcname="pets")
    result = datasets.add_path("pets", archive)
    assert not result.created and result.manifest.version == folder_version.version
    assert not list((datasets.settings.datasets_dir() / "pets").glob(".staging-*"))  # unpacked files are gone


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def test_a_repository_folder_gives_one_version_per_content_whatever_the_commit(tmp_path):
    repo = tmp_path / "repo"
    colour_folder(repo / "data" / "colours")
    (repo / "model.py").write_text("HPARAMS = {}\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "data")
    first_commit = git(repo, "rev-parse", "HEAD")
    name = datasets.repo_dataset_name(str(repo), "data/colours")
    first = datasets.import_repo_folder(name, repo, "data/colours", first_commit)
    assert first.created and first.manifest.source == {
        **first.manifest.source,
        "type": "repo",
        "folder": "data/colours",
        "commit": first_commit,
    }
    assert first.manifest.source_label == f"repo:data/colours@{first_commit[:12]}"

    (repo / "model.py").write_text("HPARAMS = {'epochs': 2}\n")  # a commit that leaves the data alone
    git(repo, "commit", "-qam", "model only")
    same = datasets.import_repo_folder(name, repo, "data/colours", git(repo, "rev-parse", "HEAD"))
    assert not same.created and same.manifest.version == 1

    save(repo / "data" / "colours" / "red" / "new.png", colour=COLOURS["red"], seed=99)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "more data")
    newer = datasets.import_repo_folder(name, repo, "data/colours", git(repo, "rev-parse", "HEAD"))
    assert newer.created and newer.manifest.version == 2

    git(repo, "checkout", "-q", first_commit)  # back to the first data: its version, not a third
    back = datasets.import_repo_folder(name, repo, "data/colours", first_commit)
    assert not back.created and back.manifest.version == 1
    assert (
        datasets.resolve(
            "repo:data/colours", checkout=repo, commit=first_commit, repository=str(repo)
        ).version
        == 1
    )


def test_repo_dataset_names_are_valid_and_distinct_per_repository():
    a = datasets.repo_dataset_name("/srv/git/pets.git", "data/pets")
    b = datasets.repo_dataset_name("ssh://other/pets.git", "data/pets")
    assert a != b and a.startswith("pets-") and a.endswith("--data-pets")
    assert datasets.check_name(a) == a and datasets.check_name(b) == b


# --- bad input -----------------------------------------------------------------------------------------------


def png_bytes(size=(12, 10), colour=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


def zip_with(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            bundle.writestr(info, "/etc/passwd")
    return path


def tar_with(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            bundle.addfile(info, io.BytesIO(content))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            bundle.addfile(info)
    return path


def good_members(per_class: int = 4) -> dict[str, bytes]:
    return {
        f"{label}/{i}.png": png_bytes(colour=(i * 20, len(label) * 10, 50))
        for label in COLOURS
        for i in range(per_class)
    }


def bad_one_class(tmp):
    colour_folder(tmp / "d")
    for label in ("green", "blue"):
        for path in (tmp / "d" / label).iterdir():
            path.unlink()
        (tmp / "d" / label).rmdir()
    return tmp / "d", ImportOptions(), "one class ('red')"


def bad_single_image(tmp):
    colour_folder(tmp / "d")
    for path in sorted((tmp / "d" / "blue").iterdir())[1:]:
        path.unlink()
    return tmp / "d", ImportOptions(), "class 'blue' has only 1 image (blue/0.png)"


def bad_too_few_for_the_test_split(tmp):
    colour_folder(tmp / "d")
    for path in sorted((tmp / "d" / "blue").iterdir())[2:]:
        path.unlink()
    return tmp / "d", ImportOptions(), "needs at least 3 so that one is held out for testing: add 1 more"


def bad_corrupt_image(tmp):
    colour_folder(tmp / "d")
    (tmp / "d" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    return tmp / "d", ImportOptions(), "red/broken.png"


def bad_truncated_png(tmp):
    colour_folder(tmp / "d")
    whole = (tmp / "d" / "green" / "2.png").read_bytes()
    (tmp / "d" / "green" / "2.png").write_bytes(whole[: len(whole) // 2])
    return tmp / "d", ImportOptions(), "green/2.png is a corrupt or truncated PNG"


def bad_truncated_jpeg(tmp):
    colour_folder(tmp / "d")
    (tmp / "d" / "green" / "photo.jpg").write_bytes(jpeg_bytes()[:900])
    return tmp / "d", ImportOptions(), "green/photo.jpg is corrupt or truncated"


def bad_image_suffix_on_text(tmp):
    colour_folder(tmp / "d")
    (tmp / "d" / "blue" / "notes.jpg").write_text("not a picture")
    return tmp / "d", ImportOptions(), "blue/notes.jpg is not a readable image"


def bad_empty_folder(tmp):
    (tmp / "d").mkdir()
    return tmp / "d", ImportOptions(), "is empty"


def bad_only_hidden_files(tmp):
    (tmp / "d" / ".git").mkdir(parents=True)
    (tmp / "d" / ".DS_Store").write_bytes(b"x")
    return tmp / "d", ImportOptions(), "is empty (only hidden files"


def bad_loose_images(tmp):
    for i in range(4):
        save(tmp / "d" / f"{i}.png", seed=i)
    return tmp / "d", ImportOptions(), "not in class folders (found 0.png)"


def bad_symlink_outside(tmp):
    colour_folder(tmp / "d")
    secret = save(tmp / "elsewhere" / "secret.png")
    (tmp / "d" / "red" / "link.png").symlink_to(secret)
    return tmp / "d", ImportOptions(), "red/link.png is a symbolic link to"


def bad_symlinked_folder_outside(tmp):
    colour_folder(tmp / "d")
    colour_folder(tmp / "outside")
    (tmp / "d" / "extra").symlink_to(tmp / "outside" / "red")
    return tmp / "d", ImportOptions(), "outside the data folder"


def bad_zip_slip_dotdot(tmp):
    return (
        zip_with(tmp / "a.zip", {**good_members(), "../../evil.png": png_bytes()}),
        ImportOptions(),
        "'../../evil.png' escapes the data folder",
    )


def bad_zip_absolute(tmp):
    return (
        zip_with(tmp / "a.zip", {**good_members(), "/tmp/evil.png": png_bytes()}),
        ImportOptions(),
        "'/tmp/evil.png' is an absolute path",
    )


def bad_tar_slip(tmp):
    return (
        tar_with(tmp / "a.tar.gz", {**good_members(), "red/../../evil.png": png_bytes()}),
        ImportOptions(),
        "escapes the data folder",
    )


def bad_tar_symlink(tmp):
    return (
        tar_with(tmp / "a.tar.gz", good_members(), link=("red/x.png", "/etc/passwd")),
        ImportOptions(),
        "red/x.png is a link",
    )


def bad_zip_symlink(tmp):
    return (
        zip_with(tmp / "a.zip", good_members(), symlink="red/x.png"),
        ImportOptions(),
        "red/x.png is a symbolic link",
    )


def bad_zip_bomb(tmp, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_ARCHIVE_MAX_UNPACKED_BYTES", str(1 << 20))
    return (
        zip_with(tmp / "bomb.zip", {**good_members(), "red/zeros.png": bytes(8 << 20)}),
        ImportOptions(),
        "decompression bomb",
    )


def bad_tar_bomb(tmp, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_ARCHIVE_MAX_UNPACKED_BYTES", str(1 << 20))
    return (
        tar_with(tmp / "bomb.tar.gz", {**good_members(), "red/zeros.png": bytes(8 << 20)}),
        ImportOptions(),
        "decompression bomb",
    )


def bad_too_many_members(tmp, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATASET_MAX_FILES", "10")
    return zip_with(tmp / "many.zip", good_members()), ImportOptions(), "more than 10 members"


def bad_too_large(tmp, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_DATASET_MAX_BYTES", "2000")
    return colour_folder(tmp / "d"), ImportOptions(), "PUSHTRAIN_DATASET_MAX_BYTES"


def bad_pixel_bomb(tmp):
    colour_folder(tmp / "d")
    header = bytearray(png_bytes())
    header[16:24] = (50_000).to_bytes(4, "big") * 2  # claims 50,000 x 50,000 pixels
    (tmp / "d" / "red" / "huge.png").write_bytes(bytes(header))
    return tmp / "d", ImportOptions(), "red/huge.png is 50000x50000 pixels"


def bad_lfs_pointer(tmp):
    colour_folder(tmp / "d")
    (tmp / "d" / "red" / "lfs.png").write_text(
        "version https://example.invalid/spec/v1\noid sha256:" + "a" * 64 + "\nsize 12345\n"
    )
    return tmp / "d", ImportOptions(), "red/lfs.png is a Git LFS pointer"


def bad_table_options_on_images(tmp):
    return (
        colour_folder(tmp / "d"),
        ImportOptions(label_column="x"),
        "label_column and categorical apply to tables",
    )


def bad_premade_classes_differ(tmp):
    for split, labels in (("train", ("red", "green", "blue")), ("test", ("red", "green"))):
        for label in labels:
            for i in range(3):
                save(tmp / "d" / split / label / f"{i}.png", seed=i)
    return tmp / "d", ImportOptions(), "only in train: ['blue']"


BAD_INPUTS = [
    bad_one_class,
    bad_single_image,
    bad_too_few_for_the_test_split,
    bad_corrupt_image,
    bad_truncated_png,
    bad_truncated_jpeg,
    bad_image_suffix_on_text,
    bad_empty_folder,
    bad_only_hidden_files,
    bad_loose_images,
    bad_symlink_outside,
    bad_symlinked_folder_outside,
    bad_zip_slip_dotdot,
    bad_zip_absolute,
    bad_tar_slip,
    bad_tar_symlink,
    bad_zip_symlink,
    bad_zip_bomb,
    bad_tar_bomb,
    bad_too_many_members,
    bad_too_large,
    bad_pixel_bomb,
    bad_lfs_pointer,
    bad_table_options_on_images,
    bad_premade_classes_differ,
]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__.removeprefix("bad_"))
def test_bad_input_fails_with_a_message_and_loses_nothing(tmp_path, monkeypatch, make_bad):
    good = datasets.add_path("photos", colour_folder(tmp_path / "good")).manifest
    before = snapshot(Path(good.root))
    arguments = (
        (tmp_path / "bad", monkeypatch)
        if "monkeypatch" in make_bad.__code__.co_varnames
        else (tmp_path / "bad",)
    )
    (tmp_path / "bad").mkdir()
    path, options, expected = make_bad(*arguments)
    with pytest.raises(DatasetError) as failure:
        datasets.add_path("photos", path, options)
    assert expected in str(failure.value)
    assert datasets.versions("photos") == [1]
    assert snapshot(Path(good.root)) == before
    store = datasets.settings.datasets_dir() / "photos"
    assert sorted(p.name for p in store.iterdir()) == ["v1"]  # no staging or unpacked files left
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_a_failed_first_import_leaves_no_name_behind(tmp_path):
    colour_folder(tmp_path / "d")
    (tmp_path / "d" / "red" / "bad.png").write_bytes(b"nope")
    with pytest.raises(DatasetError):
        datasets.add_path("fresh", tmp_path / "d")
    assert datasets.versions("fresh") == []
    assert not (datasets.settings.datasets_dir() / "fresh").exists()
    assert "fresh" not in {m.name for m in datasets.list_datasets()}


@pytest.mark.parametrize("folder", ["../outside", "/etc", "data/../../x", ""])
def test_a_repository_folder_must_stay_inside_the_checkout(tmp_path, folder):
    (tmp_path / "repo").mkdir()
    with pytest.raises(DatasetError, match="escapes|absolute|name a folder"):
        datasets.import_repo_folder("r", tmp_path / "repo", folder, "0" * 40)


def test_a_repository_folder_that_links_out_is_refused(tmp_path):
    colour_folder(tmp_path / "outside")
    (tmp_path / "repo" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "data" / "pets").symlink_to(tmp_path / "outside")
    with pytest.raises(DatasetError, match="symbolic link out of the repository"):
        datasets.import_repo_folder("r", tmp_path / "repo", "data/pets", "0" * 40)


def test_bundled_names_and_invalid_names_are_refused(tmp_path):
    source = colour_folder(tmp_path / "c")
    with pytest.raises(DatasetError, match="bundled"):
        datasets.add_path("digits", source)
    for name in ("../x", "a/b", "", "-x", "x" * 65):
        with pytest.raises(DatasetError, match="data set name"):
            datasets.add_path(name, source)


def test_the_command_line_adds_lists_and_reports_errors(tmp_path, capsys):
    source = colour_folder(tmp_path / "c")
    assert cli(["datasets", "add", "cli-set", str(source), "--image-size", "8", "8", "--channels", "1"]) == 0
    assert "new version v1" in capsys.readouterr().out
    assert cli(["datasets", "add", "cli-set", str(source), "--image-size", "8", "8", "--channels", "1"]) == 0
    assert "unchanged, still v1" in capsys.readouterr().out
    assert cli(["datasets", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["NAME", "VERSION", "KIND", "TRAIN", "TEST"]
    assert table[1].split()[:5] == ["cli-set", "v1", "images", "15", "3"] and "8x8x1" in table[1]
    assert cli(["datasets", "add", "cli-set", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
