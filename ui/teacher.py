"""Teacher links (TensorFlow Playground's habit): the whole screen in the URL.

`?step=width&width=64&hide=seed,n&lock=width&class=PHYS-1&assign=width:8,16,32` fixes a lesson step
and a configuration, hides controls (`hide=`), shows fields but locks them (`lock=`), and files the
runs under a class code (`class=`, with the student's name in `student=` or typed on the page).
The class code groups runs and grants nothing; the teacher's link adds `key=` (the class's teacher key,
made when the class is created): closing the class, exporting it and seeing names need it.
"""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from resx.core.config import ConfigError
from resx.runs.classroom import check_code, check_student, parse_assign

from .text import plain

TEACHER_PARAMS = ("step", "class", "student", "assign", "hide", "lock")


def url_set(name: str) -> set[str]:
    """A comma-separated query parameter as a set of names: ?hide=seed,n -> {"seed", "n"}."""
    return {v.strip() for v in st.query_params.get(name, "").split(",") if v.strip()}


def hidden() -> set[str]:
    return url_set("hide")


def locked() -> set[str]:
    return url_set("lock")


def keep_teacher_params() -> dict:
    """The teacher's parameters of the current URL, to carry over when a page rewrites its query."""
    return {k: st.query_params[k] for k in TEACHER_PARAMS if k in st.query_params}


def class_code() -> str | None:
    """The class code in the URL, validated (a bad one is named in a warning and ignored)."""
    raw = st.query_params.get("class")
    if not raw:
        return None
    try:
        return check_code(raw)
    except ConfigError as e:
        st.warning(f"Ignored the class code {plain(raw)} from the link: {e.allowed}.")
        return None


def assigned_field():
    """The link's assignment (`?assign=width:8,16,32`) or None; a bad one is named and ignored."""
    try:
        return parse_assign(st.query_params.get("assign"))
    except ConfigError as e:
        st.warning(f"Ignored assign={plain(st.query_params.get('assign'))}: {e.allowed}.")
        return None


def student_name(code: str | None, where=st.sidebar) -> str | None:
    """The student's name for the class board: from the URL, else typed once and kept in the session."""
    if not code:
        return None
    name = st.query_params.get("student") or st.session_state.get("student_name")
    if name:
        try:
            name = check_student(name)
        except ConfigError as e:
            where.warning(f"That name is not used: {e.allowed}.")
            name = None
    if not name:
        typed = where.text_input(f"Your name for class {code}", key="student_input",
                                 help="shown on the class board next to your predictions; no account")
        if typed:
            try:
                name = check_student(typed)
            except ConfigError as e:
                where.warning(f"That name is not used: {e.allowed}.")
                return None
    if name:
        st.session_state["student_name"] = name
    return name


def teacher_key(code: str, store) -> bool:
    """Whether this session is class `code`'s teacher. A `?key=` in the URL is checked against the
    store's hash: a right one is kept in the session and taken out of the address bar (a board
    projected in a classroom does not show it); a wrong one gets an error and the student view."""
    keys = st.session_state.setdefault("teacher_keys", {})
    given = st.query_params.get("key")
    if given:
        if store.check_teacher_key(code, given):
            keys[code] = given
            del st.query_params["key"]
        else:
            st.error(f"That teacher's key does not open class {code}: this is what its students see. "
                     "Open the class with the teacher's link it was created with.")
    return bool(keys.get(code)) and store.check_teacher_key(code, keys[code])


def session_runs() -> set[str]:
    """The runs this session started or was served, whose rows a student may see on the board."""
    ss = st.session_state
    mine = set(ss.get("my_runs", ())) | set(ss.get("served_from_cache", ())) | set(ss.get("class_filed", ()))
    for started in ss.get("lesson_step_runs", {}).values():
        mine |= set(started.get("ids", ()))
    return mine | ({ss["lab_run"]} if ss.get("lab_run") else set())


def remember_filed(run_id: str) -> None:
    st.session_state.setdefault("class_filed", set()).add(run_id)


def file_under_class(run_id: str, step: str = "lab", prediction: str = "") -> bool:
    """Tag a Lab run with the link's class code and the student's name; False when there is no
    class, no name yet, or the class is closed (then a caption says so)."""
    from .state import get_manager

    code = class_code()
    name = st.session_state.get("student_name") or st.query_params.get("student")
    if not code or not name:
        return False
    try:
        get_manager().store.tag_run(run_id, code, check_student(name), step, prediction)
    except (ValueError, ConfigError) as e:  # a closed class, or a name that is not allowed
        st.caption(f"Not filed on the class board: {e}")
        return False
    remember_filed(run_id)
    return True


def share_link(params: dict, page: str | None = None) -> str:
    """An absolute link to `page` (this page when None) carrying `params`, on the address this
    browser used to reach the server (the LAN address `python -m resx serve` printed, in a class)."""
    base = st.context.url.split("?")[0] if st.context.url else ""
    if page:
        base = base.rsplit("/", 1)[0] + "/" + page
    query = urlencode({k: v for k, v in params.items() if v not in (None, "", [])})
    return base + ("?" + query if query else "")


def link_builder(fields: tuple[str, ...], current: dict, page: str, steps: tuple[str, ...] = ()):
    """The teacher's panel: pick what the link fixes, hides and locks; a popover shows it to copy."""
    with st.expander("For the teacher: a link for the class"):
        cols = st.columns(2)
        params = {}
        if steps:
            params["step"] = cols[0].selectbox("open at step", steps, index=steps.index(current.get("step", steps[0]))
                                               if current.get("step") in steps else 0, key="tl_step")
        params["class"] = cols[1].text_input("class code (groups the runs on the Class page)",
                                             value=current.get("class", ""), key="tl_class").strip().upper()
        hide = cols[0].multiselect("hide these controls", fields, key="tl_hide")
        lock = cols[1].multiselect("show but lock these fields", [f for f in fields if f not in hide], key="tl_lock")
        assign = cols[0].text_input("give each student a value (e.g. width:8,16,32)", key="tl_assign")
        params.update({"hide": ",".join(hide), "lock": ",".join(lock), "assign": assign.strip()})
        params.update({k: v for k, v in current.items() if k not in params})
        try:
            if params["class"]:
                check_code(params["class"])
            parse_assign(params["assign"] or None)
        except ConfigError as e:
            st.error(str(e))
            return
        link = share_link(params, page)
        with st.popover("Copy link for the class", icon=":material/content_copy:"):
            st.caption("The icon at the box's right copies the link.")
            st.code(link, language=None, wrap_lines=True)
            local_address_note(link)


def local_address_note(link: str) -> None:
    """A link on localhost reaches only this machine: say so, and what to run for a room."""
    from urllib.parse import urlsplit

    if (urlsplit(link).hostname or "") in ("localhost", "127.0.0.1", "::1"):
        st.caption(":orange[This link uses localhost: it opens only on this machine.] For a class, start the "
                   "server with `python -m resx serve` and open the address it prints.")
