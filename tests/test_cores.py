"""usable_cores on fake /proc and /sys/fs/cgroup trees (issue 28: a container's CPU quota, not the host's
cores), and the RESX_WORKERS / RESX_TORCH_THREADS overrides."""
import os

import pytest

from resx.runs import jobs
from resx.runs.jobs import default_torch_threads, default_workers, usable_cores


def _tree(tmp_path, cgroup: str, files: dict[str, str]):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for rel, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


HOST = os.cpu_count()


@pytest.mark.parametrize("cgroup, files, expected", [
    # v2: the process's own group has no limit, its parent allows 1.5 cores: rounded down to 1
    ("0::/app/worker\n", {"app/cpu.max": "150000 100000\n", "app/worker/cpu.max": "max 100000\n"}, 1),
    # v2: no quota anywhere
    ("0::/app\n", {"cpu.max": "max 100000\n", "app/cpu.max": "max 100000\n"}, HOST),
    # v2: a quota far above the host's cores: the cores win
    ("0::/\n", {"cpu.max": "6400000 100000\n"}, HOST),
    # v1: cfs quota 1 core on the cpu controller (the other controllers' lines are ignored)
    ("4:memory:/x\n1:cpu,cpuacct:/x\n", {"cpu,cpuacct/x/cpu.cfs_quota_us": "100000\n",
                                         "cpu,cpuacct/x/cpu.cfs_period_us": "100000\n"}, 1),
    # v1: -1 is no quota
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, HOST),
    # no cgroup files at all (not Linux, or not mounted)
    ("0::/gone\n", {}, HOST),
])
def test_usable_cores_reads_the_quota(tmp_path, cgroup, files, expected):
    assert usable_cores(_tree(tmp_path, cgroup, files)) == expected


def test_a_quota_of_half_a_core_still_gives_one(tmp_path):
    assert usable_cores(_tree(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})) == 1


def test_workers_and_threads_follow_the_cores_unless_overridden(tmp_path, monkeypatch):
    for var in ("RESX_WORKERS", "RESX_TORCH_THREADS", "RESX_MAX_JOBS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(jobs, "usable_cores", lambda root="/": 3)
    assert default_workers() == 3 and default_torch_threads(3) == 1 and default_torch_threads(1) == 3
    monkeypatch.setenv("RESX_WORKERS", "5")
    monkeypatch.setenv("RESX_TORCH_THREADS", "2")
    assert default_workers() == 5 and default_torch_threads(5) == 2
    monkeypatch.setenv("RESX_MAX_JOBS", "4")
    assert default_workers() == 4  # the operator's cap still caps
    monkeypatch.setenv("RESX_WORKERS", "zero")
    with pytest.raises(ValueError, match="RESX_WORKERS='zero' is not allowed: a positive integer"):
        default_workers()
