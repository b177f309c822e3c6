"""CTSEG_DATA_ROOTS: user-given paths must resolve inside the allowed roots."""

from __future__ import annotations

import os

import pytest

from ctseg_core.access import allowed_roots, check_allowed_path
from ctseg_core.errors import ConfigError, CtsegError


def test_every_path_is_allowed_when_no_roots_are_set(monkeypatch, tmp_path):
    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    assert allowed_roots() is None
    assert check_allowed_path(tmp_path / "x" / ".." / "y") == (tmp_path / "y").resolve()


def test_paths_inside_any_root_pass_and_resolve(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "data").mkdir(parents=True)
    b.mkdir()
    monkeypatch.setenv("CTSEG_DATA_ROOTS", f"{a}{os.pathsep}{b}")
    assert allowed_roots() == [a.resolve(), b.resolve()]
    assert check_allowed_path(a / "data") == (a / "data").resolve()
    assert check_allowed_path(b) == b.resolve()
    assert check_allowed_path(b / "not-yet" / "pred") == (b / "not-yet" / "pred").resolve()


def test_dotdot_escape_is_refused_naming_path_and_roots(monkeypatch, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(root))
    sneaky = f"{root}/../../etc"
    with pytest.raises(ConfigError) as err:
        check_allowed_path(sneaky)
    message = str(err.value)
    assert sneaky in message and str(root.resolve()) in message and "\n" not in message
    assert isinstance(err.value, CtsegError)


def test_symlink_out_of_the_root_is_refused(monkeypatch, tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(root))
    with pytest.raises(ConfigError, match="outside the allowed data roots") as err:
        check_allowed_path(root / "link")
    assert "secret" not in str(err.value)  # where the link leads is not told


def test_sibling_with_a_common_prefix_is_not_inside(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data2").mkdir()
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(tmp_path / "data"))
    with pytest.raises(ConfigError):
        check_allowed_path(tmp_path / "data2")


def test_dotdot_is_refused_alike_whether_or_not_a_component_outside_is_a_link(
    monkeypatch, tmp_path
):
    """secret/notalink/../.. and secret/lnk/../.. resolved differently (a link's '..' leaves
    from its target), so accepting one and refusing the other told what lies outside."""
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    (allowed / "data").mkdir(parents=True)
    (secret / "notalink").mkdir(parents=True)
    (secret / "deep" / "er").mkdir(parents=True)
    (secret / "lnk").symlink_to(secret / "deep" / "er", target_is_directory=True)
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(allowed))
    messages = []
    for component in ("notalink", "lnk", "missing"):
        typed = f"{secret}/{component}/../../allowed/data"
        with pytest.raises(ConfigError) as err:
            check_allowed_path(typed)
        messages.append(str(err.value).replace(typed, "<typed>"))
    assert messages[0] == messages[1] == messages[2]
    assert "'..'" in messages[0] and "\n" not in messages[0]
    assert check_allowed_path(allowed / "data") == (allowed / "data").resolve()  # still fine


def test_a_path_outside_the_roots_is_refused_before_the_disk_is_looked_at(monkeypatch, tmp_path):
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (secret / "loop").symlink_to(secret / "loop")  # resolving it fails (a link loop)
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(allowed))
    answers = set()
    for typed in (f"{secret}/loop/x", f"{secret}/plain/x"):
        with pytest.raises(ConfigError) as err:
            check_allowed_path(typed)
        answers.add(str(err.value).replace(typed, "<typed>"))
    assert len(answers) == 1 and "outside the allowed data roots" in answers.pop()


@pytest.mark.parametrize("roots", [False, True])
@pytest.mark.parametrize(
    ("tail", "said"),
    [("a\0b", "NUL byte"), ("n" * 300, "name of 300 bytes, over"), ("d/" * 2100, "bytes long")],
    ids=["nul", "long-name", "long-path"],
)
def test_paths_no_filesystem_holds_are_one_line_refusals(monkeypatch, tmp_path, roots, tail, said):
    if roots:
        monkeypatch.setenv("CTSEG_DATA_ROOTS", str(tmp_path))
    else:
        monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    with pytest.raises(ConfigError, match=said) as err:
        check_allowed_path(f"{tmp_path}/{tail}")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_a_link_loop_is_a_one_line_refusal(monkeypatch, tmp_path):
    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfigError, match=r"loop/x cannot be resolved \(.*\); give"):
        check_allowed_path(tmp_path / "loop" / "x")


def test_a_typed_folder_must_be_a_folder(monkeypatch, tmp_path):
    from ctseg_core.access import check_allowed_folder
    from ctseg_core.errors import DataError

    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    (tmp_path / "f.txt").write_text("x")
    assert check_allowed_folder(tmp_path, "fix") == tmp_path.resolve()
    for typed in (tmp_path / "f.txt", tmp_path / "missing"):
        with pytest.raises(DataError, match=r"is not a folder; give the dataset root$"):
            check_allowed_folder(typed, "give the dataset root")
    (tmp_path / "data").symlink_to(tmp_path / "unmounted")  # "is not a folder" said no more
    with pytest.raises(DataError, match=r"data is a link to .*unmounted, which does not exist; "
                       r"give the dataset root$"):  # fmt: skip
        check_allowed_folder(tmp_path / "data", "give the dataset root")
    with pytest.raises(DataError, match=r"data/ is a link to .*unmounted, which does not"):
        check_allowed_folder(f"{tmp_path / 'data'}/", "give the dataset root")  # as typed
