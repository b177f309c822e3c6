"""The dashboard's session state: every session-state and widget key, and error display.

Pages never invent session keys; they use these names. Every st.cache_* wrapper lives in
``dashboard/cached.py``; the two modules are the only places with either.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from ctseg_core.errors import CtsegError

log = logging.getLogger("ctseg.dashboard")


@dataclass(frozen=True)
class WidgetKeys:
    """Widget keys under one prefix: ``keys.plane`` -> "<prefix>_plane" (one namespace per use)."""

    prefix: str

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{self.prefix}_{name}"


EXPLORE_VIEW = WidgetKeys("ctseg_explore")
PREDICT_VIEW = WidgetKeys("ctseg_predict")
TRAIN_FORM = WidgetKeys("ctseg_train")
EVAL_FORM = WidgetKeys("ctseg_eval")

# Session-state keys (one namespace, so pages cannot collide).
DATASET = "ctseg_dataset_root"  # str: the chosen dataset root, shared by every page
HOME_REREAD = "ctseg_home_reread"  # button: forget the dataset's kept summary and index
EXPLORE_SUBJECT = "ctseg_explore_subject"  # str: subject id shown on Explore
EXPLORE_CHECKPOINT = "ctseg_explore_checkpoint"  # str: checkpoint label or "(none)"
EXPLORE_VIEWER = "ctseg_explore_viewer"  # str: "slices" (server) or "linked planes" (NiiVue)
EXPLORE_PLANE = EXPLORE_VIEW.plane  # str: axial / coronal / sagittal
EXPLORE_STRUCTURES = EXPLORE_VIEW.structures  # list[str]: structures picked on Explore
TRAIN_RUN = "ctseg_train_run"  # str: the run watched on Train
TRAIN_STARTED = "ctseg_train_started"  # set[str]: runs started or continued from this session
TRAIN_LAUNCHES = "ctseg_train_launches"  # set[str]: the job's ids of those starts and resumes
TRAIN_RENAMED = "ctseg_train_renamed"  # (old, new) run folder: followed on the next run
EVAL_RESULT = "ctseg_eval_result"  # dict: last evaluation (table, out_dir, split)
EVAL_SUBJECTS_AMONG = "ctseg_eval_subjects_among"  # list[str]: the subject choice's options
EVAL_OPENED = "ctseg_eval_opened"  # int: subject rows opened in Explore (names the table's key)
EVAL_COMPARISON = "ctseg_eval_comparison"  # dict: last comparison (choice, table, CSV bytes)
PREDICT_RESULT = "ctseg_predict_result"  # dict: last prediction on Predict
EXPLORE_FOLDERS = "ctseg_explore_folders"  # list[str]: prediction folders evaluated here
FOLDER_PREFIX = "folder: "  # an Explore source that reads a folder of <id>.nii.gz files
MODEL_PREFIX = "model: "  # a picker option naming an nnU-Net model folder: prefix + its path

_VIEW_WIDGETS = ("plane", "structures", "groups", "preset", "level", "width", "style", "layout",
                 "alpha", "show3d", "mesh_structures", "zoom_on")  # fmt: skip
_TRAIN_WIDGETS = ("preset", "epochs", "minutes", "lr", "batch", "size", "width", "loss",
                  "scheduler", "augment", "only_present", "steps", "val", "checkpoint_every",
                  "lr_exact", "tensorboard",
                  "run_name", "kind", "context", "model3d", "init_from", "init_fold", "merge",
                  *(f"{f}_{a}" for f in ("patch", "spacing") for a in "xyz"))  # fmt: skip
_EVAL_WIDGETS = ("kind", "checkpoint", "folder", "split", "subjects", "report", "metric", "min_ml",
                 "compare_a", "compare_b", "compare_split", "compare_metric")  # fmt: skip

#: widget states that must survive visits to other pages (Streamlit drops unrendered widgets;
#: buttons, uploads and downloads cannot be set and are left out)
PERSISTENT = (
    DATASET,
    EXPLORE_SUBJECT,
    EXPLORE_CHECKPOINT,
    EXPLORE_VIEWER,
    *(f"{EXPLORE_VIEW.slice}_{plane}" for plane in ("axial", "coronal", "sagittal")),
    *(getattr(EXPLORE_VIEW, name) for name in _VIEW_WIDGETS),
    *(getattr(TRAIN_FORM, name) for name in _TRAIN_WIDGETS),
    *(getattr(EVAL_FORM, name) for name in _EVAL_WIDGETS),
    PREDICT_VIEW.checkpoint,
    TRAIN_RUN,
)


def widget_default(key: str, value):
    """A widget's default, or None once session state holds its key (kept across pages, see
    PERSISTENT): passing both makes Streamlit warn on the page."""
    return None if key in st.session_state else value


def slice_key(keys: WidgetKeys, plane: str) -> str:
    """Widget key of a viewer's slice slider in one plane (each plane keeps its own position)."""
    return f"{keys.slice}_{plane}"  # its value: the slice number, counted from 1


def volume_key(keys: WidgetKeys) -> str:
    """Session key of the volume a viewer's slice positions belong to (see volume_viewer)."""
    return f"{keys.prefix}_volume"


def zoom_key(keys: WidgetKeys) -> str:
    """Session key of the box a viewer opens zoomed to (``viewer.show_volume_at``)."""
    return f"{keys.prefix}_zoom"


def keep_widget_state() -> None:
    """Called by the router each run: re-owning the keys stops Streamlit dropping them."""
    for key in PERSISTENT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def follow_rename(old_dir: str, new_dir: str) -> None:
    """Point this session's choices that name a renamed run at its new name: the watched run,
    the resume pick, compared runs, checkpoint choices ("<run> / <file>") on Evaluate, Explore
    and Predict, and the last evaluation shown. Call it before those widgets are drawn. Other
    sessions keep the old name: their widgets fall back to a default (Streamlit drops a value
    that is not among the options), the Train page to the newest run."""
    old, new = Path(old_dir).name, Path(new_dir).name

    def moved(value, bare: bool):
        """``value`` with the run renamed: a run name (when ``bare``), a checkpoint label, a path
        inside the run folder; anything else as it is."""
        if isinstance(value, list | tuple | set):
            return type(value)(moved(v, bare) for v in value)
        if not isinstance(value, str):
            return value
        if (bare and value == old) or value.startswith(f"{old} / "):
            return new + value[len(old) :]
        if Path(value).is_absolute() and Path(value).is_relative_to(old_dir):
            return str(Path(new_dir) / Path(value).relative_to(old_dir))
        return value

    for key in (TRAIN_RUN, TRAIN_STARTED, TRAIN_FORM.resume_pick, TRAIN_FORM.compare):
        if key in st.session_state:
            st.session_state[key] = moved(st.session_state[key], bare=True)
    for key in (EVAL_FORM.checkpoint, EXPLORE_CHECKPOINT, PREDICT_VIEW.checkpoint):
        if key in st.session_state:
            st.session_state[key] = moved(st.session_state[key], bare=False)
    info = st.session_state.get(EVAL_RESULT)
    if isinstance(info, dict):
        fields = ("checkpoint", "out_dir", "form")
        info.update({k: moved(info[k], bare=False) for k in fields if k in info})


# ---------------------------------------------------------------- errors


def show_error(exc: BaseException, what: str = "") -> None:
    """One st.error line: the user's mistake with its fix, or an unexpected failure (logged).

    Shown as plain text (``plain``): messages name files, folders and values from the data.
    """
    prefix = f"{what}: " if what else ""
    if isinstance(exc, CtsegError):
        st.error(plain(f"{prefix}{exc}"), icon=":material/error:")
        return
    log.error("unexpected error%s\n%s", f" in {what}" if what else "", traceback.format_exc())
    st.error(
        plain(
            f"{prefix}{type(exc).__name__}: {exc} (an unexpected failure; the server log has the "
            "details — please report it)"
        ),
        icon=":material/bug_report:",
    )


def show_warning(text: str, icon: str = ":material/warning:") -> None:
    """One st.warning line, shown as plain text (it names files or values from the data)."""
    st.warning(plain(text), icon=icon)


def guarded(body: Callable[[], None], what: str = "") -> None:
    """Run a page body; an error becomes one st.error line and the rest of the app keeps working.

    Streamlit's own control flow (st.stop, st.rerun, st.switch_page) derives from BaseException,
    so it passes through untouched.
    """
    try:
        body()
    except Exception as exc:
        show_error(exc, what)


#: headers in which an authenticating proxy (oauth2-proxy, Apache, nginx auth_request) names
#: its user; only a label in status.json, never a permission (without a proxy anyone can send one)
USER_HEADERS = (
    "X-Forwarded-User", "X-Forwarded-Preferred-Username", "X-Auth-Request-User",
    "X-Remote-User", "Remote-User", "X-Forwarded-Email",
)  # fmt: skip


def who() -> str:
    """Who is at this browser, as a run's status records it: the proxy's user (letters,
    digits, '@', '.', '_', '-' only), or a generic label when the dashboard is not behind an
    authenticating proxy."""
    from ctseg_core.runs.status import user_label

    try:
        headers = st.context.headers
        for name in USER_HEADERS:
            label = user_label(headers.get(name) or "", "dashboard")
            if label:
                return label
    except Exception:  # no browser request behind this run (AppTest, a bare script)
        pass
    return "a dashboard user"


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=])")
#: line breaks: a heading underlined with ===, a paragraph, a code block indented on its own line
_LINES = re.compile(r"\s*[\r\n]+\s*")
#: where Streamlit's frontend finds links and icons in text that escapes do not reach: remark-gfm
#: links "https://", "www." and "a@b.c" in the parsed text, and ":material/" is replaced in the
#: source; an invisible U+200B at these points leaves the text as it reads but matches none
_AFTER_PARSING = re.compile(r"(?i)(?<=:)(?=//|material/|streamlit:)|(?<=www)(?=\.)|(?<=@)(?=[-\w])")


def plain(text) -> str:
    """``text`` from files or other users, shown as it is in Streamlit's Markdown: no links
    (also no bare URL or e-mail address made a link), no formatting, no ``:icon:`` or
    ``:color[...]`` directives, no blocks (headings, code): one line. Every Markdown character
    is escaped and line breaks become spaces; a zero-width space follows the ':' of 'https:'
    and ':material/', the 'www' of 'www.' and an '@'."""
    text = _LINES.sub(" ", str(text))
    return _MARKDOWN.sub(r"\\\1", _AFTER_PARSING.sub("\u200b", text))


def dataset_root() -> str | None:
    """The dataset chosen on Home (shared by every page), or the default when none was chosen."""
    if DATASET not in st.session_state:
        from dashboard.cached import default_dataset

        root, is_demo = default_dataset()
        if is_demo and not (Path(root) / "meta.csv").is_file():
            return None  # Home generates it (with a spinner) on first start
        st.session_state[DATASET] = root
    return st.session_state[DATASET]
