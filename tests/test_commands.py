import os
import subprocess
import sys
import textwrap

import pytest

# The tiny config's train step (its temporary buffer ~0.5 GB) run three times; prints what
# keep_freed_host_memory returned and the page faults of the second and third steps (the first compiles).
FAULTS_OF_TRAIN_STEPS = textwrap.dedent("""
    import resource, sys
    from flan_jax import commands
    kept = commands.keep_freed_host_memory() if sys.argv[1] == "keep" else None
    import jax
    from configs import tiny
    from flan_jax import bench
    faults = []
    with bench.one_device_train_step(tiny.get_config()) as (step, state, batch):
      for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(kept, *faults[1:])
""")


def _step_faults(mode, **tunables):
  """(what keep_freed_host_memory returned, the page faults of two train steps) in a new process, so
  that this one stays as it was, with one CPU device as a command has (not conftest's eight, whose
  threads allocate too); GLIBC_TUNABLES only as given."""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")} | tunables
  result = subprocess.run([sys.executable, "-c", FAULTS_OF_TRAIN_STEPS, mode], capture_output=True, text=True,
                          check=True, env=env)
  kept, *faults = result.stdout.split()
  return kept, [int(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_train_steps_reuse_the_freed_temporary_buffer():
  _, default = _step_faults("default")
  kept, faults = _step_faults("keep")
  assert min(default) > 10_000  # glibc unmapped the last step's temporary buffer, and it faults in again
  assert kept == "True" and faults[-1] < min(default) / 100  # the heap settles after the first steps


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_user_glibc_tunables_are_left_alone():
  kept, faults = _step_faults("keep", GLIBC_TUNABLES="glibc.malloc.check=0")
  assert kept == "False" and min(faults) > 10_000


@pytest.mark.parametrize("platforms, device_files, expected", [
    ("cpu", ["/dev/accel0"], True), ("tpu,cpu", [], False), ("cuda", [], False), ("", [], True),
    ("", ["/dev/nvidia0"], False), ("", ["/dev/vfio/0"], False)])
def test_freed_host_memory_is_kept_only_where_the_process_computes_on_the_cpu(monkeypatch, platforms,
                                                                              device_files, expected):
  """Told from JAX_PLATFORMS, else from the accelerators' device files, without starting a backend."""
  import fnmatch
  import glob

  import jax

  from flan_jax import commands
  monkeypatch.setattr(glob, "glob", lambda pattern: fnmatch.filter(device_files, pattern))
  previous = jax.config.jax_platforms
  jax.config.update("jax_platforms", platforms or None)
  try:
    assert commands.runs_on_cpu() == expected
  finally:
    jax.config.update("jax_platforms", previous)


def _imported_flan_jax_modules(path):
  """The flan_jax modules a file imports (`import flan_jax.x`, `from flan_jax import x`, `from flan_jax.x
  import y`), as dotted names."""
  import ast
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names if alias.name.startswith("flan_jax.")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flan_jax"):
      found |= {node.module} if node.module != "flan_jax" else set()
      found |= {f"{node.module}.{alias.name}" for alias in node.names}
  return found


def test_no_library_module_and_no_config_imports_a_command():
  """Commands (modules with a __main__ block) are leaves: the library under them and the configs never
  import one, so a test or tool can use any library function without a command's flags."""
  import glob
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  modules = {path: os.path.relpath(path, root)[:-3].replace(os.sep, ".")
             for path in glob.glob(os.path.join(root, "flan_jax", "**", "*.py"), recursive=True)}
  is_command = {name: '__name__ == "__main__"' in open(path).read() for path, name in modules.items()}
  commands = {name for name, command in is_command.items() if command}
  assert {"flan_jax.train", "flan_jax.evaluate", "flan_jax.generate", "flan_jax.judge", "flan_jax.convert",
          "flan_jax.self_instruct", "flan_jax.bench", "flan_jax.sweep", "flan_jax.report",
          "flan_jax.harness"} <= commands
  importers = [path for path, name in modules.items() if not is_command[name]]
  importers += glob.glob(os.path.join(root, "configs", "**", "*.py"), recursive=True)
  for path in importers:
    assert not _imported_flan_jax_modules(path) & commands, path
