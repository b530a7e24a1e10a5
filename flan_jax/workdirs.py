"""Where a run keeps its outputs: `workdirs/<config name>[_<arg>]` unless --workdir says otherwise."""

import os


def default(config_arg: str) -> str:
  """`configs/flan2021.py:held_out=nli` -> `workdirs/flan2021_held_out=nli`; slashes in the argument
  (a checkpoint path) become underscores, so the workdir is one directory."""
  path, _, arg = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{arg.replace('/', '_')}" if arg else name)


def tokenizer_dir(workdir: str) -> str:
  return os.path.join(workdir, "tokenizer")
