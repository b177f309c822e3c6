"""Explore: a checkpoint's labels on a CT outside what it was trained on come with a warning."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(300)

PHANTOM_ONLY = "was trained on the synthetic phantom only, not on real CTs"


def _warnings(at) -> list[str]:
    return [w.value.replace("\\", "") for w in at.warning]  # shown as plain text: unescaped


def test_explore_warns_when_the_phantoms_model_labels_a_real_subject(
    app_env, tiny_run, s0000_root, new_app, no_problems
):
    at = new_app("explore")
    at.run()
    at.selectbox(key="ctseg_explore_checkpoint").set_value("tiny / best.pth")
    at.run()
    no_problems(at)
    assert at.get("image")[0].proto.imgs[0].caption.startswith("reference | prediction")
    assert _warnings(at) == []  # the phantom's model on the phantom
    at.session_state["ctseg_dataset_root"] = str(s0000_root)  # a real dataset, chosen on Home
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value("s0000")
    at.selectbox(key="ctseg_explore_checkpoint").set_value("tiny / best.pth")
    at.run()
    no_problems(at)
    assert at.get("image")[0].proto.imgs[0].caption.startswith("reference | prediction")
    found = _warnings(at)
    assert found[0] == (
        f"tiny/best.pth {PHANTOM_ONLY}: its labels on s0000 do not follow the anatomy; use a "
        "checkpoint trained on real CTs"
    )
