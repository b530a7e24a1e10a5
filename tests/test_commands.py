import os
import subprocess
import sys
import textwrap

import pytest

# A thread allocates, touches and frees a 64 MiB buffer twice and prints the page faults of each round.
FAULTS_OF_TWO_BUFFERS = textwrap.dedent("""
    import resource, sys, threading
    import numpy as np
    from flan_jax import commands
    kept = commands.keep_freed_host_memory() if sys.argv[1] == "keep" else None
    faults = []
    def allocate_twice():
      for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        buffer = np.ones(64 * 2**20 // 8)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
        del buffer
    thread = threading.Thread(target=allocate_twice)
    thread.start()
    thread.join()
    print(kept, *faults)
""")


def _faults(mode, **tunables):
  """(what keep_freed_host_memory returned, faults of the first buffer, of the second) in a new process,
  so that this one's malloc stays as it was; GLIBC_TUNABLES only as given."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | tunables
  result = subprocess.run([sys.executable, "-c", FAULTS_OF_TWO_BUFFERS, mode], capture_output=True, text=True,
                          check=True, env=env)
  kept, first, second = result.stdout.split()
  return kept, int(first), int(second)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_host_memory_is_reused_without_page_faults():
  default = _faults("default")
  kept = _faults("keep")
  assert default[2] >= 8  # glibc gave the first buffer back, and the second faults in again
  assert kept[0] == "True" and kept[2] <= 2  # the second buffer is the first one's memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_user_glibc_tunables_are_left_alone():
  kept, _, second = _faults("keep", GLIBC_TUNABLES="")
  assert kept == "False" and second >= 8
