"""Unit tests of ``sandbox.build_bwrap_command``: one per restriction model and policy option.

The function is pure, so every test builds a RestrictionModel by hand (no probing)
and reads the argv it returns.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from sandbox import PolicyError, Restriction, RestrictionModel, SandboxPolicy, build_bwrap_command

BWRAP = "/usr/bin/bwrap"
SETPRIV = "/usr/bin/setpriv"
PYTHON = "/usr/bin/python3"  # under /usr: its installation adds no bind of its own
ROOT_MODEL = RestrictionModel(Restriction.NONE, BWRAP, "0.8.0", privileged=True, setpriv=SETPRIV)
USER_MODEL = RestrictionModel(Restriction.NONE, BWRAP, "0.8.0", privileged=False)


def build(
    model: RestrictionModel = ROOT_MODEL,
    policy: SandboxPolicy | None = None,
    *,
    python: str = PYTHON,
    module_path: str | Sequence[str] = "/work/plugin/mod.py",
    venv_path: str | None = None,
    uds_address: str | int | None = 3,
    allow_gpu: bool = False,
    **kwargs: object,
) -> list[str]:
    return build_bwrap_command(python, module_path, venv_path, uds_address, allow_gpu, model,
                               policy or SandboxPolicy(), **kwargs)  # type: ignore[arg-type]


def has_seq(cmd: list[str], *seq: str) -> bool:
    """``seq`` occurs in ``cmd`` as consecutive items."""
    n = len(seq)
    return any(tuple(cmd[i : i + n]) == seq for i in range(len(cmd) - n + 1))


def index_of(cmd: list[str], *seq: str) -> int:
    n = len(seq)
    for i in range(len(cmd) - n + 1):
        if tuple(cmd[i : i + n]) == seq:
            return i
    raise AssertionError(f"{seq} not in {cmd}")


def binds(cmd: list[str], flag: str) -> list[str]:
    """Sources of every ``flag SRC DEST`` option (DEST must equal SRC)."""
    out = []
    for i, item in enumerate(cmd):
        if item == flag:
            src, dest = cmd[i + 1], cmd[i + 2]
            assert src == dest, f"{flag} {src} {dest}: bound at another path"
            out.append(src)
    return out


def bwrap_options(cmd: list[str]) -> list[str]:
    """The part of the argv that bwrap itself parses (after prlimit's '--', before the command)."""
    start = cmd.index(BWRAP) + 1
    end = cmd.index(SETPRIV) if SETPRIV in cmd else cmd.index(PYTHON)
    return cmd[start:end]


# -- restriction models ----------------------------------------------------------------------


def test_privileged_model_drops_to_uid_with_setpriv() -> None:
    """As root, setpriv runs between bwrap and Python with --reuid/--regid and no capabilities."""
    cmd = build(ROOT_MODEL, uid=201234)
    i_bwrap, i_setpriv, i_python = cmd.index(BWRAP), cmd.index(SETPRIV), cmd.index(PYTHON)
    assert i_bwrap < i_setpriv < i_python
    priv = cmd[i_setpriv:i_python]
    for opt in ("--reuid=201234", "--regid=201234", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                "--no-new-privs"):
        assert opt in priv
    assert priv[-1] == "--"


def test_privileged_model_does_not_unshare_user() -> None:
    """As root, bwrap runs without --unshare-user (setpriv does the dropping instead)."""
    cmd = build(ROOT_MODEL)
    assert "--unshare-user" not in cmd
    assert "--cap-drop" not in cmd


def test_unprivileged_model_uses_user_namespace_and_drops_caps() -> None:
    """As a normal user, bwrap gets --unshare-user and --cap-drop ALL, and setpriv is not used."""
    cmd = build(USER_MODEL)
    opts = bwrap_options(cmd)
    assert "--unshare-user" in opts
    assert has_seq(opts, "--cap-drop", "ALL")
    assert SETPRIV not in cmd
    assert not any(a.startswith("--reuid") for a in cmd)
    assert cmd[cmd.index(PYTHON) - 1] == "/tmp"  # '--chdir /tmp' then straight to Python


@pytest.mark.parametrize("restriction", [r for r in Restriction if r is not Restriction.NONE])
def test_unavailable_model_raises_value_error_with_explanation(restriction: Restriction) -> None:
    """A model that cannot sandbox makes the builder raise ValueError carrying explain() (and the remedy)."""
    model = RestrictionModel(restriction, detail="probe said no")
    with pytest.raises(ValueError) as info:
        build(model)
    assert model.explain() in str(info.value)
    assert model.remedy in str(info.value)


def test_available_model_without_bwrap_path_raises() -> None:
    """A model claiming NONE but naming no bwrap binary is refused rather than building a broken argv."""
    with pytest.raises(ValueError, match="cannot build a sandbox command"):
        build(RestrictionModel(Restriction.NONE, bwrap=None))


def test_bwrap_runs_under_prlimit() -> None:
    """prlimit comes first and hands over to the model's bwrap after '--' (limits set before bwrap starts)."""
    cmd = build(USER_MODEL)
    assert cmd[0] == "prlimit"
    assert cmd[cmd.index("--") + 1] == BWRAP


def test_every_namespace_is_unshared() -> None:
    """pid, ipc, uts and cgroup namespaces are unshared in every model."""
    for model in (ROOT_MODEL, USER_MODEL):
        opts = bwrap_options(build(model))
        for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"):
            assert flag in opts, (model, flag)


def test_die_with_parent_and_new_session() -> None:
    """--die-with-parent and --new-session are bwrap options in every model."""
    for model in (ROOT_MODEL, USER_MODEL):
        opts = bwrap_options(build(model))
        assert "--die-with-parent" in opts
        assert "--new-session" in opts


# -- policy options ------------------------------------------------------------------------


def test_network_off_unshares_net() -> None:
    """The default policy unshares the network and binds no resolv.conf."""
    cmd = build(policy=SandboxPolicy())
    assert "--unshare-net" in cmd
    assert "--share-net" not in cmd
    assert "/etc/resolv.conf" not in cmd


def test_network_on_shares_net_and_resolv_conf() -> None:
    """network=True shares the network and binds /etc/resolv.conf read-only (when present)."""
    cmd = build(policy=SandboxPolicy(network=True))
    assert "--share-net" in cmd
    assert "--unshare-net" not in cmd
    assert has_seq(cmd, "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf")


def test_writable_and_readable_paths(tmp_path: Path) -> None:
    """writable_paths are --bind, readable_paths --ro-bind, each at its own path and nowhere else."""
    w, r = tmp_path / "out", tmp_path / "data"
    w.mkdir()
    r.mkdir()
    cmd = build(policy=SandboxPolicy(writable_paths=(str(w),), readable_paths=(str(r),)))
    assert str(w) in binds(cmd, "--bind")
    assert str(r) in binds(cmd, "--ro-bind")
    assert str(r) not in binds(cmd, "--bind")
    assert str(w) not in binds(cmd, "--ro-bind")


def test_a_writable_path_is_never_mounted_over_a_read_only_one_inside_it(tmp_path: Path) -> None:
    """A writable directory holding the environment: the read-only environment is mounted after, on top."""
    shared = tmp_path / "shared"
    env = shared / "envs" / "abc"
    env.mkdir(parents=True)
    cmd = build(policy=SandboxPolicy(writable_paths=(str(shared),)), venv_path=str(env))
    assert index_of(cmd, "--bind", str(shared), str(shared)) < index_of(cmd, "--ro-bind", str(env), str(env))


def test_no_extra_paths_means_no_writable_bind() -> None:
    """With an inherited socket fd and no writable_paths, nothing of the host is writable."""
    assert binds(build(uds_address=3), "--bind") == []


def test_memory_limit_sets_prlimit_data() -> None:
    """memory_limit becomes prlimit --data=N:N (soft and hard) before bwrap."""
    limit = 512 << 20
    cmd = build(policy=SandboxPolicy(memory_limit=limit))
    i = cmd.index(f"--data={limit}:{limit}")
    assert i < cmd.index(BWRAP)


def test_no_memory_limit_means_no_data_limit() -> None:
    """Without memory_limit, prlimit sets no --data limit."""
    assert not any(a.startswith("--data=") for a in build(policy=SandboxPolicy()))


def test_process_and_open_file_limits() -> None:
    """max_processes and max_open_files become prlimit --nproc and --nofile (soft and hard)."""
    cmd = build(policy=SandboxPolicy(max_processes=64, max_open_files=256))
    head = cmd[: cmd.index(BWRAP)]
    assert "--nproc=64:64" in head
    assert "--nofile=256:256" in head


def test_nproc_limit_overrides_policy() -> None:
    """An explicit nproc_limit (user-namespace mode counts all the uid's processes) wins over the policy."""
    cmd = build(USER_MODEL, SandboxPolicy(max_processes=64), nproc_limit=1000)
    assert "--nproc=1000:1000" in cmd
    assert "--nproc=64:64" not in cmd


def test_allow_gpu_binds_device_nodes() -> None:
    """allow_gpu=True dev-binds /dev/nvidiactl, the UVM nodes and the listed /dev/nvidiaN (when present)."""
    cmd = build(allow_gpu=True, gpu_devices=("/dev/nvidia0", "/dev/nvidia1"))
    devs = binds(cmd, "--dev-bind-try")
    for dev in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/dri"):
        assert dev in devs
    assert "/proc/driver/nvidia" in binds(cmd, "--ro-bind-try")


def test_no_gpu_binds_no_device_nodes() -> None:
    """allow_gpu=False binds no device node, even if GPU nodes were listed."""
    cmd = build(allow_gpu=False, gpu_devices=("/dev/nvidia0",))
    assert "--dev-bind-try" not in cmd
    assert not any("nvidia" in a for a in cmd)


def test_env_is_cleared_then_set() -> None:
    """--clearenv comes first, then exactly the given variables as --setenv pairs."""
    env = {"ACTORBOX_CHILD": "1", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    cmd = build(env=env)
    i_clear = cmd.index("--clearenv")
    pairs = {cmd[i + 1]: cmd[i + 2] for i, a in enumerate(cmd) if a == "--setenv"}
    assert pairs == env
    assert all(i > i_clear for i, a in enumerate(cmd) if a == "--setenv")
    assert i_clear < cmd.index(PYTHON)


def test_no_env_still_clears_environment() -> None:
    """Without env, the host environment is still cleared and nothing is set."""
    cmd = build(env=None)
    assert "--clearenv" in bwrap_options(cmd)
    assert "--setenv" not in cmd


def test_path_uds_address_binds_its_directory(tmp_path: Path) -> None:
    """A socket path binds its directory (writable), not its parent nor the socket alone."""
    sock_dir = tmp_path / "sockets"
    sock_dir.mkdir()
    cmd = build(uds_address=str(sock_dir / "actor.sock"))
    assert binds(cmd, "--bind") == [str(sock_dir)]


@pytest.mark.parametrize("address", ["/a.sock", "/tmp/a.sock", "/home/a.sock", "a.sock", "/etc/x/a.sock"])
def test_socket_in_a_broad_or_system_directory_is_refused(address: str) -> None:
    """A socket path whose directory is /, /tmp, /home, relative or a system path would expose too much."""
    with pytest.raises(PolicyError):
        build(uds_address=address)


def test_int_uds_address_binds_nothing() -> None:
    """An inherited socket fd needs no bind at all."""
    cmd = build(uds_address=7)
    assert binds(cmd, "--bind") == []
    assert "7" not in cmd


def test_module_and_venv_are_read_only(tmp_path: Path) -> None:
    """The actor's module paths and its venv are --ro-bind, never --bind."""
    mod1, mod2, venv = tmp_path / "pkg", tmp_path / "other.py", tmp_path / "venv"
    cmd = build(module_path=[str(mod1), str(mod2)], venv_path=str(venv))
    ro = binds(cmd, "--ro-bind")
    for p in (mod1, mod2, venv):
        assert str(p) in ro
    assert not set(binds(cmd, "--bind")) & {str(mod1), str(mod2), str(venv)}


def test_single_module_path_string(tmp_path: Path) -> None:
    """A module path given as one string is bound whole (not character by character)."""
    mod = str(tmp_path / "mod.py")
    ro = binds(build(module_path=mod), "--ro-bind")
    assert mod in ro
    assert "/" not in ro


def test_interpreter_installation_is_read_only() -> None:
    """The real interpreter's installation prefix (venv links resolved) is --ro-bind."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    cmd = build(python=sys.executable)
    if prefix == "/usr" or prefix.startswith("/usr/"):
        assert has_seq(cmd, "--ro-bind", "/usr", "/usr")
    else:
        assert prefix in binds(cmd, "--ro-bind")
    assert cmd[-1] == sys.executable


def test_tmp_and_dev_shm_are_private_tmpfs() -> None:
    """/tmp and /dev/shm are fresh tmpfs, /dev/shm mounted after /dev so it is not hidden."""
    cmd = build()
    assert has_seq(cmd, "--tmpfs", "/tmp")
    assert has_seq(cmd, "--tmpfs", "/dev/shm")
    assert index_of(cmd, "--dev", "/dev") < index_of(cmd, "--tmpfs", "/dev/shm")
    assert "/dev/shm" not in binds(cmd, "--bind") + binds(cmd, "--ro-bind")


def test_system_is_read_only_and_etc_is_not_bound_whole() -> None:
    """/usr is read-only; /etc is never bound whole, and /etc/shadow is never bound."""
    cmd = build()
    assert has_seq(cmd, "--ro-bind", "/usr", "/usr")
    assert "/usr" not in binds(cmd, "--bind")
    all_binds = binds(cmd, "--bind") + binds(cmd, "--ro-bind") + binds(cmd, "--ro-bind-try")
    assert "/etc" not in all_binds
    assert "/etc/shadow" not in all_binds


def test_argv_follows_python() -> None:
    """The interpreter is followed by exactly the given argv, at the end of the command."""
    cmd = build(argv=("-m", "actorbox._child", "3"))
    assert cmd[-4:] == [PYTHON, "-m", "actorbox._child", "3"]


def test_builder_is_pure() -> None:
    """Two calls with the same inputs return equal argv lists."""
    policy = SandboxPolicy(network=True, memory_limit=256 << 20)
    assert build(USER_MODEL, policy, env={"A": "1"}) == build(USER_MODEL, policy, env={"A": "1"})



@pytest.mark.parametrize("gpu", [True, False])
def test_only_a_gpu_actor_gets_the_hosts_library_path(gpu: bool) -> None:
    """An allow_gpu actor gets the host's LD_LIBRARY_PATH (driver libraries); others don't."""
    from sandbox._launcher import LaunchSpec, build_command

    env = {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "SECRET": "x"}
    spec = LaunchSpec(PYTHON, "actorbox._child", (), env, pass_fds=(3,), policy=SandboxPolicy(allow_gpu=gpu))
    cmd = build_command(spec, ROOT_MODEL)
    pairs = {cmd[i + 1]: cmd[i + 2] for i, a in enumerate(cmd) if a == "--setenv"}
    assert ("LD_LIBRARY_PATH" in pairs) == gpu and "SECRET" not in pairs
    assert "--unshare-pid" in bwrap_options(cmd)
