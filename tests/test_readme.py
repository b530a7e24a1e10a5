"""README.md is a user's guide: short, and every command in it runs as written (its flags are the
command's own, its config keys and files exist, its links lead somewhere)."""

import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_config

README = open(os.path.join(ROOT, "README.md")).read()


def commands():
  """Each `python -m flan_jax.<command> ...` of the README's bash blocks, continuations joined,
  as its words."""
  found = []
  for block in re.findall(r"```bash\n(.*?)```", README, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("#")[0]
      start = line.find("python -m flan_jax")
      if start >= 0:
        found.append(shlex.split(line[start:]))
  return found


@functools.cache
def defined_flags(module: str) -> str:
  result = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  return result.stdout + result.stderr


def test_readme_is_a_guide_of_at_most_400_lines_whose_links_exist():
  assert len(README.splitlines()) <= 400
  for target in re.findall(r"\]\(([^)#]+)\)", README):
    assert os.path.exists(os.path.join(ROOT, target)), target
  for script in re.findall(r"\blaunch/[\w.]+", README):
    assert os.path.exists(os.path.join(ROOT, script)), script


@pytest.mark.slow
def test_every_readme_command_uses_its_commands_flags_and_existing_config_keys():
  tiny = load_config("tiny")
  seen = set()
  for words in commands():
    module = words[2]
    seen.add(module)
    for word in words[3:]:
      name = re.match(r"--([\w.]+)", word)
      if not name:
        continue
      name = name.group(1)
      if name.startswith("config."):
        node = tiny
        for key in name.split(".")[1:]:
          assert key in node, f"{' '.join(words)}: no config key {name[len('config.'):]}"
          node = node[key]
      else:
        assert re.search(rf"--(\[no\])?{name}:", defined_flags(module)), f"{module} has no flag --{name}"
      if name == "config":
        path = words[words.index(word) + 1] if word == "--config" else word.split("=", 1)[1]
        assert os.path.exists(os.path.join(ROOT, path.split(":")[0])), path
  assert {"flan_jax.train", "flan_jax.evaluate", "flan_jax.generate", "flan_jax.convert", "flan_jax.plan"} <= seen
